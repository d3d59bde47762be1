//! Exact parameter counts, derived independently of the model code, and the torchvision and
//! published figures they must reproduce.
use cephalo::graph::Graph;
use cephalo::model::{backbone_param_count, ModelConfig};

fn build(model: &str, in_channels: usize, landmarks: usize) -> Graph {
    ModelConfig::new(model, in_channels, landmarks, [256, 256], 1)
        .unwrap()
        .build()
        .unwrap()
}

fn conv(c_in: usize, c_out: usize, k: usize) -> usize {
    c_in * c_out * k * k
}

fn bn(c: usize) -> usize {
    2 * c // gamma and beta; running statistics are not parameters
}

/// torchvision ResNet without the classifier: conv1 7x7 + bn1, then the four stages.
fn resnet_backbone(bottleneck: bool, blocks: [usize; 4], in_channels: usize) -> usize {
    let mut total = conv(in_channels, 64, 7) + bn(64);
    let mut c = 64;
    for (stage, &n) in blocks.iter().enumerate() {
        let planes = 64 << stage;
        let out = if bottleneck { planes * 4 } else { planes };
        for k in 0..n {
            let c_in = if k == 0 { c } else { out };
            total += if bottleneck {
                conv(c_in, planes, 1)
                    + bn(planes)
                    + conv(planes, planes, 3)
                    + bn(planes)
                    + conv(planes, out, 1)
                    + bn(out)
            } else {
                conv(c_in, planes, 3) + bn(planes) + conv(planes, planes, 3) + bn(planes)
            };
            if k == 0 && (stage > 0 || c_in != out) {
                total += conv(c_in, out, 1) + bn(out); // downsample projection
            }
        }
        c = out;
    }
    total
}

/// SimpleBaseline head: 3 x (4x4 transposed conv to 256, no bias, + BN), 1x1 conv to K + bias.
fn deconv_head(c_in: usize, k: usize) -> usize {
    conv(c_in, 256, 4) + bn(256) + 2 * (conv(256, 256, 4) + bn(256)) + conv(256, k, 1) + k
}

#[test]
fn resnet_backbones_have_the_torchvision_counts() {
    // torchvision totals minus the fc layer (512 or 2048 inputs x 1000 classes + 1000 biases):
    // resnet18 11,689,512 - 513,000 = 11,176,512; resnet34 21,797,672 - 513,000 = 21,284,672;
    // resnet50 25,557,032 - 2,049,000 = 23,508,032.
    for (model, want, bottleneck, blocks) in [
        ("resnet18", 11_176_512, false, [2, 2, 2, 2]),
        ("resnet34", 21_284_672, false, [3, 4, 6, 3]),
        ("resnet50", 23_508_032, true, [3, 4, 6, 3]),
    ] {
        let g = build(model, 3, 29);
        assert_eq!(resnet_backbone(bottleneck, blocks, 3), want, "{model}: derivation");
        assert_eq!(backbone_param_count(&g), want, "{model}: graph backbone");
        let c_out = if bottleneck { 2048 } else { 512 };
        assert_eq!(g.param_count(), want + deconv_head(c_out, 29), "{model}: with head");
        // Grayscale input: conv1 has 1 input channel instead of 3.
        let gray = build(model, 1, 29);
        assert_eq!(gray.param_count(), g.param_count() - conv(2, 64, 7));
    }
    // SimpleBaseline ResNet-50 with 17 COCO keypoints is published as 34.0 M parameters.
    assert_eq!(build("resnet50", 3, 17).param_count(), 33_999_697);
}

/// HRNet backbone: stem, layer1, transitions and stages 2-4 (modules with full fuse layers).
fn hrnet_backbone(c_in: usize, w: usize) -> usize {
    let widths = [w, 2 * w, 4 * w, 8 * w];
    let basic = |c: usize| 2 * (conv(c, c, 3) + bn(c));
    let fuse = |i: usize, j: usize| {
        if j > i {
            conv(widths[j], widths[i], 1) + bn(widths[i])
        } else {
            (i - j - 1) * (conv(widths[j], widths[j], 3) + bn(widths[j]))
                + conv(widths[j], widths[i], 3)
                + bn(widths[i])
        }
    };
    let module = |b: usize| {
        let blocks: usize = (0..b).map(|i| 4 * basic(widths[i])).sum();
        let fuses: usize = (0..b)
            .flat_map(|i| (0..b).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| fuse(i, j))
            .sum();
        blocks + fuses
    };
    let stem = conv(c_in, 64, 3) + bn(64) + conv(64, 64, 3) + bn(64);
    let bottleneck = |c: usize| conv(c, 64, 1) + bn(64) + conv(64, 64, 3) + bn(64) + conv(64, 256, 1) + bn(256);
    let layer1 = bottleneck(64) + conv(64, 256, 1) + bn(256) + 3 * bottleneck(256);
    let t1 = conv(256, w, 3) + bn(w) + conv(256, 2 * w, 3) + bn(2 * w);
    let t2 = conv(2 * w, 4 * w, 3) + bn(4 * w);
    let t3 = conv(4 * w, 8 * w, 3) + bn(8 * w);
    stem + layer1 + t1 + module(2) + t2 + 4 * module(3) + t3 + 3 * module(4)
}

/// HRNetV2 head: 1x1 conv 15C -> 15C with bias, BN, 1x1 conv 15C -> K with bias.
fn hrnet_head(w: usize, k: usize) -> usize {
    let c = 15 * w;
    conv(c, c, 1) + c + bn(c) + conv(c, k, 1) + k
}

#[test]
fn hrnet_counts_match_the_derivation() {
    for (model, w) in [("hrnet-w18", 18), ("hrnet-w32", 32), ("hrnet-w48", 48)] {
        for c_in in [1, 3] {
            let g = build(model, c_in, 29);
            assert_eq!(
                backbone_param_count(&g),
                hrnet_backbone(c_in, w),
                "{model} backbone, {c_in} channels"
            );
            assert_eq!(
                g.param_count(),
                hrnet_backbone(c_in, w) + hrnet_head(w, 29),
                "{model} total"
            );
        }
    }
    // The figures themselves (3 input channels, docs/maths.md#networks): W32 backbone
    // 29,305,536 = 29.3 M (pose-HRNet's published 28.5 M differs, as explained below), W32 with
    // the HRNetV2 head for 29 landmarks 29,551,325 (about 29.6 M).
    assert_eq!(hrnet_backbone(3, 32), 29_305_536);
    assert_eq!(hrnet_backbone(3, 32) + hrnet_head(32, 29), 29_551_325);
    // W18 with head: about 9.6 M.
    assert_eq!(hrnet_backbone(3, 18) + hrnet_head(18, 29), 9_643_829);
}

#[test]
fn pose_hrnet_w32_is_the_published_28_54_million() {
    // Pose-HRNet (Sun et al. 2019) differs from our backbone in one place: the last module of
    // stage 4 only produces the 1/4 branch, so it has no fuse layers towards branches 1-3; and
    // it ends in a 1x1 conv 32 -> 17 with bias. Removing those fuse layers from our graph and
    // adding that conv must give the published 28.54 M.
    let g = build("hrnet-w32", 3, 17);
    let extra_fuse: usize = g
        .params
        .iter()
        .filter(|p| {
            p.kind.trainable()
                && ["i1.", "i2.", "i3."]
                    .iter()
                    .any(|i| p.name.starts_with(&format!("stage4.m2.fuse.{i}")))
        })
        .map(|p| p.len())
        .sum();
    let pose = backbone_param_count(&g) - extra_fuse + conv(32, 17, 1) + 17;
    assert_eq!(pose, 28_536_113);
    assert_eq!((pose as f64 / 1e4).round() / 100.0, 28.54);
}
