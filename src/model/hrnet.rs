//! HRNetV2 for landmark heatmaps (docs/maths.md#networks): four parallel branches at 1/4, 1/8, 1/16
//! and 1/32 of the input with widths C, 2C, 4C, 8C, repeatedly fused; the head upsamples every
//! branch to 1/4, concatenates them (15C channels) and maps them to one heatmap per landmark.
//!
//! Layer names: `stem.conv1`, `layer1.block0.conv1`, `transition1.b1.conv`,
//! `stage3.m1.b2.block0.conv1`, `stage3.m1.fuse.i0.j2.conv`, `head.conv1`, ...
use crate::backend::UpsampleMode;
use crate::graph::{GraphBuilder, Init, TensorId};

/// Modules and branches per stage (stages 2, 3, 4); every branch has 4 BasicBlocks.
const STAGES: [(usize, usize); 3] = [(1, 2), (4, 3), (3, 4)];
const BLOCKS_PER_BRANCH: usize = 4;

/// Builds the network on `x` and returns the heatmap tensor (1/4 of the input, `landmarks` channels).
pub fn build(b: &mut GraphBuilder, x: TensorId, width: usize, landmarks: usize) -> TensorId {
    b.set_conv_init(Init::Normal { std: 0.001 });
    let x = b.scope("stem", |b| {
        let x = b.conv_bn(("conv1", "bn1"), x, 64, 3, 2, true);
        b.conv_bn(("conv2", "bn2"), x, 64, 3, 2, true)
    });
    let x = b.scope("layer1", |b| {
        let mut x = x;
        for i in 0..4 {
            x = b.scope(format!("block{i}"), |b| bottleneck(b, x, 64, i == 0));
        }
        x
    });
    let widths: Vec<usize> = (0..4).map(|i| width << i).collect();
    let mut branches = b.scope("transition1", |b| {
        vec![
            b.scope("b0", |b| b.conv_bn(("conv", "bn"), x, widths[0], 3, 1, true)),
            b.scope("b1", |b| b.conv_bn(("conv", "bn"), x, widths[1], 3, 2, true)),
        ]
    });
    for (s, &(modules, n_branches)) in STAGES.iter().enumerate() {
        if branches.len() < n_branches {
            // Transitions 2 and 3 add a branch: a stride-2 conv from the lowest resolution.
            let last = *branches.last().expect("at least one branch");
            let nb = branches.len();
            let new = b.scope(format!("transition{}", s + 1), |b| {
                b.scope(format!("b{nb}"), |b| {
                    b.conv_bn(("conv", "bn"), last, widths[nb], 3, 2, true)
                })
            });
            branches.push(new);
        }
        branches = b.scope(format!("stage{}", s + 2), |b| {
            let mut xs = branches.clone();
            for m in 0..modules {
                xs = b.scope(format!("m{m}"), |b| hr_module(b, &xs, &widths[..n_branches]));
            }
            xs
        });
    }
    b.scope("head", |b| {
        let base = b.shape(branches[0]);
        let mut parts = vec![branches[0]];
        for (j, &t) in branches.iter().enumerate().skip(1) {
            let factor = base.h / b.shape(t).h;
            parts.push(b.upsample(&format!("up{j}"), t, factor, UpsampleMode::Bilinear));
        }
        let cat = b.concat("concat", &parts);
        let c = b.shape(cat).c;
        let y = b.conv("conv1", cat, c, 1, 1, true);
        let y = b.batchnorm("bn1", y, true);
        b.conv("conv2", y, landmarks, 1, 1, true)
    })
}

/// Bottleneck (1x1 -> 3x3 -> 1x1 x4 channels); the first block projects the input with a 1x1.
pub(crate) fn bottleneck(b: &mut GraphBuilder, x: TensorId, planes: usize, project: bool) -> TensorId {
    bottleneck_strided(b, x, planes, 1, project, ("downsample.0", "downsample.1"))
}

/// Bottleneck with the stride on the 3x3 (torchvision v1.5) and named projection layers.
pub(crate) fn bottleneck_strided(
    b: &mut GraphBuilder,
    x: TensorId,
    planes: usize,
    stride: usize,
    project: bool,
    proj_names: (&str, &str),
) -> TensorId {
    let y = b.conv_bn(("conv1", "bn1"), x, planes, 1, 1, true);
    let y = b.conv_bn(("conv2", "bn2"), y, planes, 3, stride, true);
    let y = b.conv_bn(("conv3", "bn3"), y, planes * 4, 1, 1, false);
    let shortcut = if project {
        b.conv_bn(proj_names, x, planes * 4, 1, stride, false)
    } else {
        x
    };
    b.add_relu("add_relu", y, shortcut)
}

/// BasicBlock (3x3 -> 3x3), identity shortcut unless `project` names a 1x1 projection.
pub(crate) fn basic_block(b: &mut GraphBuilder, x: TensorId, planes: usize, stride: usize, project: bool) -> TensorId {
    let y = b.conv_bn(("conv1", "bn1"), x, planes, 3, stride, true);
    let y = b.conv_bn(("conv2", "bn2"), y, planes, 3, 1, false);
    let shortcut = if project {
        b.conv_bn(("downsample.0", "downsample.1"), x, planes, 1, stride, false)
    } else {
        x
    };
    b.add_relu("add_relu", y, shortcut)
}

/// One high-resolution module: 4 BasicBlocks per branch, then every output branch i sums all
/// branches brought to its resolution and width, followed by ReLU.
fn hr_module(b: &mut GraphBuilder, xs: &[TensorId], widths: &[usize]) -> Vec<TensorId> {
    let ys: Vec<TensorId> = xs
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            b.scope(format!("b{i}"), |b| {
                let mut y = x;
                for k in 0..BLOCKS_PER_BRANCH {
                    y = b.scope(format!("block{k}"), |b| basic_block(b, y, widths[i], 1, false));
                }
                y
            })
        })
        .collect();
    b.scope("fuse", |b| {
        (0..ys.len())
            .map(|i| {
                b.scope(format!("i{i}"), |b| {
                    let terms: Vec<TensorId> = (0..ys.len())
                        .map(|j| {
                            if j == i {
                                ys[j]
                            } else {
                                b.scope(format!("j{j}"), |b| fuse_path(b, ys[j], i, j, widths))
                            }
                        })
                        .collect();
                    let mut acc = terms[0];
                    for (k, &t) in terms.iter().enumerate().skip(1) {
                        acc = if k + 1 == terms.len() {
                            b.add_relu(&format!("add{k}"), acc, t)
                        } else {
                            b.add(&format!("add{k}"), acc, t)
                        };
                    }
                    acc
                })
            })
            .collect()
    })
}

/// Brings branch j to branch i: 1x1 conv + BN + nearest upsampling when j is coarser, a chain
/// of stride-2 3x3 convs when it is finer (BN-ReLU between, BN only on the last).
fn fuse_path(b: &mut GraphBuilder, x: TensorId, i: usize, j: usize, widths: &[usize]) -> TensorId {
    if j > i {
        let y = b.conv_bn(("conv", "bn"), x, widths[i], 1, 1, false);
        b.upsample("up", y, 1 << (j - i), UpsampleMode::Nearest)
    } else {
        let mut y = x;
        for k in 0..i - j {
            let last = k + 1 == i - j;
            let c = if last { widths[i] } else { widths[j] };
            y = b.scope(format!("down{k}"), |b| b.conv_bn(("conv", "bn"), y, c, 3, 2, !last));
        }
        y
    }
}
