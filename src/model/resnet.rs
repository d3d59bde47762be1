//! SimpleBaseline (Xiao et al. 2018): a ResNet backbone (output stride 32) followed by three
//! 4x4 stride-2 transposed convolutions (256 filters, BN, ReLU) back to 1/4, then a 1x1
//! convolution to one heatmap per landmark.
//!
//! Backbone layer names are torchvision's (`conv1`, `bn1`, `layer2.0.downsample.0`, ...), the
//! head's are SimpleBaseline's (`deconv_layers.0`, `deconv_layers.1`, ..., `final_layer`), so
//! ImageNet weights and PyTorch checkpoints map onto ours by name.
use crate::graph::{GraphBuilder, Init, TensorId};
use crate::model::hrnet::{basic_block, bottleneck_strided};

/// Which residual block and how many per stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResNetDepth {
    pub bottleneck: bool,
    pub blocks: [usize; 4],
}

pub const RESNET18: ResNetDepth = ResNetDepth {
    bottleneck: false,
    blocks: [2, 2, 2, 2],
};
pub const RESNET34: ResNetDepth = ResNetDepth {
    bottleneck: false,
    blocks: [3, 4, 6, 3],
};
pub const RESNET50: ResNetDepth = ResNetDepth {
    bottleneck: true,
    blocks: [3, 4, 6, 3],
};

/// Builds backbone and head on `x`; returns the heatmaps (1/4 of the input).
pub fn build(b: &mut GraphBuilder, x: TensorId, depth: ResNetDepth, landmarks: usize) -> TensorId {
    b.set_conv_init(Init::KaimingFanOut);
    let x = b.conv_bn(("conv1", "bn1"), x, 64, 7, 2, true);
    let mut x = b.maxpool("maxpool", x, 3, 2, 1);
    let expansion = if depth.bottleneck { 4 } else { 1 };
    let mut channels = 64;
    for (stage, &n) in depth.blocks.iter().enumerate() {
        let planes = 64 << stage;
        x = b.scope(format!("layer{}", stage + 1), |b| {
            let mut x = x;
            for k in 0..n {
                let stride = if k == 0 && stage > 0 { 2 } else { 1 };
                let project = k == 0 && (stride != 1 || channels != planes * expansion);
                x = b.scope(k, |b| {
                    if depth.bottleneck {
                        bottleneck_strided(b, x, planes, stride, project, ("downsample.0", "downsample.1"))
                    } else {
                        basic_block(b, x, planes, stride, project)
                    }
                });
                channels = planes * expansion;
            }
            x
        });
    }
    b.set_conv_init(Init::Normal { std: 0.001 });
    b.scope("deconv_layers", |b| {
        for i in 0..3 {
            let y = b.conv_transpose(&(3 * i).to_string(), x, 256, 4, 2, 1);
            x = b.batchnorm(&(3 * i + 1).to_string(), y, true);
        }
    });
    b.conv("final_layer", x, landmarks, 1, 1, true)
}
