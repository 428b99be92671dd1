//! `backend: "sluice_image"`: encoded images (BYTES, one per batch row) → FP32
//! tensors a vision network takes.
//!
//! Per row: decode (JPEG, PNG, WebP; the format is read from the bytes), convert to
//! 8-bit RGB (alpha dropped, grey replicated, as Pillow's `convert("RGB")`), resize
//! (`shorter_side`: the shorter side to `shorter_side` pixels keeping the aspect
//! ratio, then a center crop to the output's H×W, as torchvision's
//! `Resize(s)` + `CenterCrop`; `exact`: straight to H×W), then
//! `(pixel * scale - mean[c]) / std[c]` per channel into NCHW or NHWC.
//! The resize is a separable convolution with Pillow's filters (`fast_image_resize`),
//! so `bilinear` matches `Image.resize(..., BILINEAR)` to within rounding.

use std::io::Cursor;
use std::sync::Arc;

use fast_image_resize as fir;
use sluice_core::{
    Backend, DataType, Error, Instance, InstanceOptions, LoadSpec, LoadedModel, Result, Tensor,
};

use crate::params::{self, Params};

const STEP: &str = "sluice_image";
const KNOWN: &[&str] = &[
    "resize",
    "shorter_side",
    "filter",
    "color",
    "scale",
    "mean",
    "std",
    "layout",
    "max_image_pixels",
];
/// Default bound on a decoded image (width × height), against decompression bombs.
const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// The image pre-processing backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImageBackend;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resize {
    ShorterSide,
    Exact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Color {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy)]
enum Filter {
    Nearest,
    Convolution(fir::FilterType),
}

/// Everything a run needs, fixed at load.
#[derive(Debug, Clone)]
struct Settings {
    output: String,
    batching: bool,
    width: u32,
    height: u32,
    resize: Resize,
    shorter_side: u32,
    filter: Filter,
    color: Color,
    layout: Layout,
    /// Per channel (in output channel order): `pixel * mul[c] + add[c]`, i.e.
    /// `mul = scale / std`, `add = -mean / std`.
    mul: [f32; 3],
    add: [f32; 3],
    max_pixels: u64,
}

impl Backend for ImageBackend {
    fn name(&self) -> &'static str {
        STEP
    }

    fn load(&self, spec: &LoadSpec<'_>) -> Result<Arc<dyn LoadedModel>> {
        Ok(Arc::new(ImageModel {
            settings: Arc::new(Settings::from_spec(spec)?),
        }))
    }
}

impl Settings {
    fn from_spec(spec: &LoadSpec<'_>) -> Result<Settings> {
        let config = spec.config;
        params::expect_count(STEP, "input", &config.input, 1..=1)?;
        params::expect_count(STEP, "output", &config.output, 1..=1)?;
        let input = &config.input[0];
        params::expect_type(STEP, "input", input, &[DataType::Bytes])?;
        params::expect_one_element(STEP, input)?;
        let output = &config.output[0];
        params::expect_type(STEP, "output", output, &[DataType::F32])?;
        let p = Params::new(STEP, config, KNOWN);
        let layout = p.choice(
            "layout",
            &[("NCHW", Layout::Nchw), ("NHWC", Layout::Nhwc)],
            Layout::Nchw,
        )?;
        let (c, h, w) = match (layout, output.dims.as_slice()) {
            (Layout::Nchw, &[c, h, w]) => (c, h, w),
            (Layout::Nhwc, &[h, w, c]) => (c, h, w),
            _ => {
                return Err(Error::invalid(format!(
                    "{STEP}: output '{}' must have three dims ({}), the config says {:?}",
                    output.name,
                    if layout == Layout::Nchw {
                        "[ 3, H, W ] for layout NCHW"
                    } else {
                        "[ H, W, 3 ] for layout NHWC"
                    },
                    output.dims
                )))
            }
        };
        let fixed = |d: i64| u32::try_from(d).ok().filter(|&d| d > 0 && d <= 16384);
        let (Some(height), Some(width)) = (fixed(h), fixed(w)) else {
            return Err(Error::invalid(format!(
                "{STEP}: output '{}' needs a fixed height and width (1 to 16384), the config says {:?}",
                output.name, output.dims
            )));
        };
        if c != 3 {
            return Err(Error::invalid(format!(
                "{STEP}: output '{}' must have 3 channels (RGB or BGR), the config says {c}",
                output.name
            )));
        }
        let resize = p.choice(
            "resize",
            &[
                ("shorter_side", Resize::ShorterSide),
                ("exact", Resize::Exact),
            ],
            Resize::ShorterSide,
        )?;
        let shorter_side = match p.positive("shorter_side")? {
            Some(_) if resize == Resize::Exact => {
                return Err(Error::invalid(format!(
                    "{STEP}: parameter shorter_side applies to resize: shorter_side, not to resize: exact"
                )))
            }
            Some(s) => u32::try_from(s)
                .ok()
                .filter(|&s| s <= 16384)
                .ok_or_else(|| {
                    Error::invalid(format!("{STEP}: parameter shorter_side {s} is too large"))
                })?,
            None => width.max(height),
        };
        if resize == Resize::ShorterSide && shorter_side < width.max(height) {
            return Err(Error::invalid(format!(
                "{STEP}: shorter_side {shorter_side} is smaller than the output's {width}x{height}: \
                 the center crop would not fit"
            )));
        }
        use fir::FilterType as F;
        let filter = p.choice(
            "filter",
            &[
                ("bilinear", Filter::Convolution(F::Bilinear)),
                ("nearest", Filter::Nearest),
                ("box", Filter::Convolution(F::Box)),
                ("hamming", Filter::Convolution(F::Hamming)),
                ("bicubic", Filter::Convolution(F::CatmullRom)),
                ("lanczos", Filter::Convolution(F::Lanczos3)),
            ],
            Filter::Convolution(F::Bilinear),
        )?;
        let color = p.choice(
            "color",
            &[("RGB", Color::Rgb), ("BGR", Color::Bgr)],
            Color::Rgb,
        )?;
        let per_channel = |key: &str, default: f32| -> Result<[f32; 3]> {
            match p.floats(key)?.as_deref() {
                None => Ok([default; 3]),
                Some(&[v]) => Ok([v; 3]),
                Some(&[a, b, c]) => Ok([a, b, c]),
                Some(other) => Err(Error::invalid(format!(
                    "{STEP}: parameter {key} needs 1 or 3 values (one per channel, in the output's \
                     channel order), got {}",
                    other.len()
                ))),
            }
        };
        let scale = match p.number::<f32>("scale", "a number")? {
            None => 1.0 / 255.0,
            Some(s) if s.is_finite() => s,
            Some(s) => {
                return Err(Error::invalid(format!(
                    "{STEP}: parameter scale must be a finite number, got {s}"
                )))
            }
        };
        let mean = per_channel("mean", 0.0)?;
        let std = per_channel("std", 1.0)?;
        if let Some(s) = std.iter().find(|s| **s == 0.0) {
            return Err(Error::invalid(format!(
                "{STEP}: parameter std must not hold {s} (it divides)"
            )));
        }
        let max_pixels = p
            .positive("max_image_pixels")?
            .map_or(DEFAULT_MAX_PIXELS, |n| n as u64);
        Ok(Settings {
            output: output.name.clone(),
            batching: config.max_batch_size > 0,
            width,
            height,
            resize,
            shorter_side,
            filter,
            color,
            layout,
            mul: std::array::from_fn(|c| scale / std[c]),
            add: std::array::from_fn(|c| -mean[c] / std[c]),
            max_pixels,
        })
    }

    /// The size the whole image is resized to before the crop.
    fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        match self.resize {
            Resize::Exact => (self.width, self.height),
            Resize::ShorterSide => {
                // torchvision's rule: the shorter side becomes `s`, the longer one
                // `int(s * long / short)` (truncated).
                let s = u64::from(self.shorter_side);
                let scaled = |long: u32, short: u32| {
                    let v = s * u64::from(long) / u64::from(short.max(1));
                    u32::try_from(v).unwrap_or(u32::MAX).max(self.shorter_side)
                };
                if width <= height {
                    (self.shorter_side, scaled(height, width))
                } else {
                    (scaled(width, height), self.shorter_side)
                }
            }
        }
    }
}

struct ImageModel {
    settings: Arc<Settings>,
}

impl LoadedModel for ImageModel {
    fn instance(&self, _options: &InstanceOptions) -> Result<Box<dyn Instance>> {
        Ok(Box::new(ImageInstance {
            settings: Arc::clone(&self.settings),
            resizer: fir::Resizer::new(),
        }))
    }
}

struct ImageInstance {
    settings: Arc<Settings>,
    resizer: fir::Resizer,
}

impl Instance for ImageInstance {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let s = Arc::clone(&self.settings);
        let input = inputs
            .first()
            .ok_or_else(|| Error::internal("sluice_image got no input tensor"))?;
        let rows = params::bytes_rows(input)?;
        if !s.batching && rows.len() != 1 {
            return Err(Error::invalid(format!(
                "input '{}' holds {} images; this model takes one (max_batch_size 0)",
                input.name,
                rows.len()
            )));
        }
        let plane = s.width as usize * s.height as usize;
        let mut out = vec![0f32; rows.len() * plane * 3];
        for (row, (bytes, dest)) in rows.iter().zip(out.chunks_exact_mut(plane * 3)).enumerate() {
            sluice_core::catch_panics(STEP, "processing an image", || {
                self.process(&s, bytes, dest)
            })
            .map_err(|e| {
                Error::new(
                    e.kind(),
                    format!("input '{}', row {row}: {}", input.name, e.message()),
                )
            })?;
        }
        let (h, w) = (s.height as usize, s.width as usize);
        let image_dims = match s.layout {
            Layout::Nchw => [3, h, w],
            Layout::Nhwc => [h, w, 3],
        };
        let shape: Vec<usize> = if s.batching {
            std::iter::once(rows.len()).chain(image_dims).collect()
        } else {
            image_dims.to_vec()
        };
        Ok(vec![params::f32_tensor(&s.output, shape, &out)?])
    }
}

impl ImageInstance {
    /// Decodes, resizes, crops and normalizes one image into `dest` (H×W×3 floats).
    fn process(&mut self, s: &Settings, bytes: &[u8], dest: &mut [f32]) -> Result<()> {
        let rgb = decode(bytes, s.max_pixels)?;
        let (iw, ih) = rgb.dimensions();
        let (rw, rh) = s.resized_size(iw, ih);
        let resized = if (rw, rh) == (iw, ih) {
            rgb.into_raw()
        } else {
            let src = fir::images::ImageRef::new(iw, ih, rgb.as_raw(), fir::PixelType::U8x3)
                .map_err(|e| Error::internal(format!("image buffer: {e}")))?;
            let mut dst = fir::images::Image::new(rw, rh, fir::PixelType::U8x3);
            let alg = match s.filter {
                Filter::Nearest => fir::ResizeAlg::Nearest,
                Filter::Convolution(f) => fir::ResizeAlg::Convolution(f),
            };
            self.resizer
                .resize(&src, &mut dst, &fir::ResizeOptions::new().resize_alg(alg))
                .map_err(|e| Error::internal(format!("cannot resize the image: {e}")))?;
            dst.into_vec()
        };
        // torchvision's CenterCrop offsets: round((size - crop) / 2), with Python's
        // round half to even.
        let offset_of = |excess: u32| -> usize {
            let half = excess / 2;
            (if excess % 2 == 1 && half % 2 == 1 {
                half + 1
            } else {
                half
            }) as usize
        };
        let (left, top) = (offset_of(rw - s.width), offset_of(rh - s.height));
        let (w, h, rw) = (s.width as usize, s.height as usize, rw as usize);
        let order: [usize; 3] = match s.color {
            Color::Rgb => [0, 1, 2],
            Color::Bgr => [2, 1, 0],
        };
        let plane = w * h;
        for y in 0..h {
            let line = &resized[((top + y) * rw + left) * 3..][..w * 3];
            for (x, px) in line.chunks_exact(3).enumerate() {
                for (c, &from) in order.iter().enumerate() {
                    let v = f32::from(px[from]) * s.mul[c] + s.add[c];
                    let at = match s.layout {
                        Layout::Nchw => c * plane + y * w + x,
                        Layout::Nhwc => (y * w + x) * 3 + c,
                    };
                    dest[at] = v;
                }
            }
        }
        Ok(())
    }
}

/// Decodes an encoded image into 8-bit RGB, refusing more than `max_pixels` pixels
/// before any pixel memory is allocated.
fn decode(bytes: &[u8], max_pixels: u64) -> Result<image::RgbImage> {
    if bytes.is_empty() {
        return Err(Error::invalid("the image is empty (0 bytes)"));
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::invalid(format!("cannot read the image: {e}")))?;
    let Some(format) = reader.format() else {
        return Err(Error::invalid(
            "not an image this step decodes (expected JPEG, PNG or WebP)",
        ));
    };
    if format == image::ImageFormat::Jpeg {
        check_jpeg_complete(bytes)?;
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| Error::invalid(format!("cannot decode the {format:?} image: {e}")))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(Error::invalid(format!(
            "the image is {w}x{h} pixels, more than max_image_pixels {max_pixels}"
        )));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    image::ImageDecoder::set_limits(&mut decoder, limits)
        .map_err(|e| Error::invalid(format!("the {format:?} image is too large: {e}")))?;
    let decoded = image::DynamicImage::from_decoder(decoder)
        .map_err(|e| Error::invalid(format!("cannot decode the {format:?} image: {e}")))?;
    Ok(decoded.into_rgb8())
}

/// Refuses a JPEG cut short, which the decoder would decode with its missing part
/// filled in. The end-of-image marker (`FF D9`) must follow the last start-of-scan
/// marker (`FF DA`): inside entropy-coded data an `FF` byte is always escaped (`FF 00`)
/// or a restart marker, so the first `FF D9` after the last scan's start is the image's
/// end, and data after it (some cameras append some) is allowed. A file cut before
/// its first scan fails in the decoder itself.
fn check_jpeg_complete(bytes: &[u8]) -> Result<()> {
    let Some(scan) = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]) else {
        return Ok(());
    };
    if bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9]) {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "the JPEG image is truncated: its last scan (at byte {scan} of {}) has no \
         end-of-image marker",
        bytes.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bytes_tensor, config, load, read_f32};

    fn png(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn image_config(params: &[(&str, &str)], dims: Vec<i64>) -> sluice_core::ModelConfig {
        config(
            "sluice_image",
            4,
            &[("image", DataType::Bytes, vec![1])],
            &[("pixels", DataType::F32, dims)],
            params,
        )
    }

    #[test]
    fn exact_resize_normalizes_per_channel_in_both_layouts() {
        // A 4x2 image of one colour: every output pixel is that colour, normalized.
        let bytes = png(4, 2, |_, _| [255, 128, 0]);
        let params = [
            ("resize", "exact"),
            ("mean", "0.5,0.5,0.5"),
            ("std", "0.5, 0.25, 1"),
        ];
        for (layout, dims) in [("NCHW", vec![3, 3, 2]), ("NHWC", vec![3, 2, 3])] {
            let mut p = params.to_vec();
            p.push(("layout", layout));
            let mut inst = load(&ImageBackend, &image_config(&p, dims.clone()));
            let out = inst
                .run(vec![bytes_tensor("image", &[&bytes, &bytes])])
                .unwrap();
            let mut shape = vec![2usize];
            shape.extend(dims.iter().map(|&d| d as usize));
            assert_eq!(out[0].shape, shape);
            let v = read_f32(&out[0]);
            let want = [
                (1.0 - 0.5) / 0.5,
                (128.0 / 255.0 - 0.5) / 0.25,
                (0.0 - 0.5) / 1.0,
            ];
            for (i, x) in v.iter().enumerate() {
                let c = if layout == "NCHW" { (i / 6) % 3 } else { i % 3 };
                assert!(
                    (x - want[c]).abs() < 1e-6,
                    "{layout} {i}: {x} vs {}",
                    want[c]
                );
            }
        }
    }

    #[test]
    fn shorter_side_then_center_crop_keeps_the_middle() {
        // 40x20: left half black, right quarter white. Shorter side 4 -> 8x4, crop 4x4
        // from x=2: columns 2..6 of the resized image.
        let bytes = png(
            40,
            20,
            |x, _| if x < 20 { [0, 0, 0] } else { [255, 255, 255] },
        );
        let mut inst = load(
            &ImageBackend,
            &image_config(
                &[("shorter_side", "4"), ("scale", "1"), ("filter", "nearest")],
                vec![3, 4, 4],
            ),
        );
        let out = inst.run(vec![bytes_tensor("image", &[&bytes])]).unwrap();
        let v = read_f32(&out[0]);
        // First row of channel 0: resized columns 2,3 are black, 4,5 white.
        assert_eq!(&v[0..4], &[0.0, 0.0, 255.0, 255.0]);
        // BGR swaps channels: with a grey-free image channel 0 becomes blue.
        let red = png(8, 8, |_, _| [200, 10, 30]);
        let mut bgr = load(
            &ImageBackend,
            &image_config(&[("color", "BGR"), ("scale", "1")], vec![3, 8, 8]),
        );
        let v = read_f32(&bgr.run(vec![bytes_tensor("image", &[&red])]).unwrap()[0]);
        assert_eq!((v[0], v[64], v[128]), (30.0, 10.0, 200.0));
    }

    #[test]
    fn a_bad_image_is_an_error_naming_its_row() {
        let good = png(8, 8, |_, _| [1, 2, 3]);
        let mut inst = load(&ImageBackend, &image_config(&[], vec![3, 8, 8]));
        for (bad, expect) in [
            (&b"definitely not an image"[..], "not an image"),
            (&b""[..], "empty"),
            (&good[..good.len() / 2], "cannot decode"),
        ] {
            let err = inst
                .run(vec![bytes_tensor("image", &[&good, bad])])
                .unwrap_err();
            assert_eq!(err.kind(), sluice_core::ErrorKind::InvalidArgument, "{err}");
            assert!(err.message().contains("row 1"), "{err}");
            assert!(err.message().contains(expect), "{err}");
        }
        // The instance keeps working.
        assert!(inst.run(vec![bytes_tensor("image", &[&good])]).is_ok());
    }

    #[test]
    fn a_truncated_jpeg_is_refused_and_trailing_data_is_allowed() {
        let img =
            image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        let jpeg = out.into_inner();
        assert!(decode(&jpeg, 1 << 20).is_ok());
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(&[0u8; 100]);
        assert!(decode(&trailing, 1 << 20).is_ok());
        for cut in [jpeg.len() - 2, jpeg.len() * 2 / 3] {
            let err = decode(&jpeg[..cut], 1 << 20).unwrap_err();
            assert!(err.message().contains("JPEG image is truncated"), "{err}");
        }
    }

    #[test]
    fn an_image_past_max_image_pixels_is_refused_before_decoding() {
        let big = png(100, 100, |_, _| [0, 0, 0]);
        let mut inst = load(
            &ImageBackend,
            &image_config(&[("max_image_pixels", "9999")], vec![3, 8, 8]),
        );
        let err = inst.run(vec![bytes_tensor("image", &[&big])]).unwrap_err();
        assert!(err.message().contains("100x100"), "{err}");
    }

    #[test]
    fn bad_configs_are_refused_at_load_naming_the_problem() {
        let cases: Vec<(sluice_core::ModelConfig, &str)> = vec![
            (
                image_config(&[("filter", "fancy")], vec![3, 8, 8]),
                "filter must be one of",
            ),
            (image_config(&[], vec![3, -1, 8]), "fixed height and width"),
            (image_config(&[], vec![8, 8, 3]), "3 channels"),
            (
                image_config(&[("layout", "NHWC")], vec![3, 8, 8]),
                "3 channels",
            ),
            (
                image_config(&[("std", "1,0,1")], vec![3, 8, 8]),
                "std must not",
            ),
            (
                image_config(&[("mean", "1,2")], vec![3, 8, 8]),
                "1 or 3 values",
            ),
            (
                image_config(&[("shorter_side", "4")], vec![3, 8, 8]),
                "center crop would not fit",
            ),
            (
                image_config(&[("resize", "exact"), ("shorter_side", "9")], vec![3, 8, 8]),
                "not to resize: exact",
            ),
            (
                config(
                    "sluice_image",
                    4,
                    &[("image", DataType::F32, vec![1])],
                    &[("pixels", DataType::F32, vec![3, 8, 8])],
                    &[],
                ),
                "must be TYPE_STRING",
            ),
            (
                config(
                    "sluice_image",
                    4,
                    &[("image", DataType::Bytes, vec![2])],
                    &[("pixels", DataType::F32, vec![3, 8, 8])],
                    &[],
                ),
                "dims [ 1 ]",
            ),
        ];
        for (config, expect) in cases {
            let err = crate::testing::load_err(&ImageBackend, &config);
            assert!(err.message().contains(expect), "{expect}: {err}");
        }
    }

    #[test]
    fn resized_sizes_follow_torchvision() {
        let config = image_config(&[("shorter_side", "256")], vec![3, 224, 224]);
        let spec = crate::testing::spec(&config, std::path::Path::new("/nonexistent/1/model.onnx"));
        let s = Settings::from_spec(&spec).unwrap();
        assert_eq!(s.resized_size(600, 400), (384, 256));
        assert_eq!(s.resized_size(512, 512), (256, 256));
        assert_eq!(s.resized_size(300, 451), (256, 384)); // 256*451/300 = 384.85 -> 384
    }
}
