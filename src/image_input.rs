//! Turning a photo into a network input the way torchvision's classification
//! presets do: resize the shorter side to 256/224 of the crop, center-crop to
//! the network's resolution, scale to [0, 1], normalise with ImageNet's mean/std.

use netc_runtime::HostTensor;
use std::path::Path;

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Decodes and preprocesses an image into a `[1, 3, h, w]` tensor.
pub fn load(path: &Path, h: usize, w: usize) -> Result<HostTensor, String> {
    let img = image::open(path)
        .map_err(|e| format!("cannot decode `{}` as an image: {e}", path.display()))?
        .to_rgb8();
    let (iw, ih) = img.dimensions();
    if iw == 0 || ih == 0 {
        return Err(format!("`{}` is an empty image", path.display()));
    }
    // Resize so the shorter side is crop * 256 / 224 (torchvision's Resize(256) for 224).
    let short = (h.min(w) as f64 * 256.0 / 224.0).round() as u32;
    let scale = short as f64 / iw.min(ih) as f64;
    let (rw, rh) = (
        ((iw as f64 * scale).round() as u32).max(w as u32),
        ((ih as f64 * scale).round() as u32).max(h as u32),
    );
    let resized = image::imageops::resize(&img, rw, rh, image::imageops::FilterType::Triangle);
    let (x0, y0) = ((rw - w as u32) / 2, (rh - h as u32) / 2);
    let mut data = vec![0f32; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            let p = resized.get_pixel(x0 + x as u32, y0 + y as u32);
            for c in 0..3 {
                data[c * h * w + y * w + x] = (p[c] as f32 / 255.0 - MEAN[c]) / STD[c];
            }
        }
    }
    Ok(HostTensor {
        shape: vec![1, 3, h, w],
        data,
    })
}
