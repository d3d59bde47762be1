//! Key layouts of the published backbones and their mapping onto cephalo's parameter names.
//!
//! * HRNet: timm's `hrnet_w*` is MSRA's classification HRNet, key for key; mmpose's HRNet
//!   backbone is the same under `backbone.`. The structure is cephalo's (stem of two stride-2
//!   3x3 convs, 4 Bottlenecks, stages of 1/4/3 modules with 4 BasicBlocks per branch, nearest
//!   upsampling in the fuse layers, all four branches kept by stage 4); only the names differ:
//!
//!   | file                                   | cephalo                              |
//!   |----------------------------------------|--------------------------------------|
//!   | `conv1`, `bn1`, `conv2`, `bn2`         | `stem.conv1`, `stem.bn1`, ...        |
//!   | `layer1.K.*`                           | `layer1.blockK.*`                    |
//!   | `transitionT.I.0` / `.1` (same branch) | `transitionT.bI.conv` / `.bn`        |
//!   | `transitionT.I.0.0` / `.0.1` (new)     | `transitionT.bI.conv` / `.bn`        |
//!   | `stageS.M.branches.B.K.*`              | `stageS.mM.bB.blockK.*`              |
//!   | `stageS.M.fuse_layers.I.J.0` / `.1`    | `stageS.mM.fuse.iI.jJ.conv` / `.bn`  |
//!   | `stageS.M.fuse_layers.I.J.K.0` / `.1`  | `stageS.mM.fuse.iI.jJ.downK.conv` / `.bn` |
//!
//!   The classification head (`incre_modules`, `downsamp_modules`, `final_layer`,
//!   `classifier`) has no counterpart: cephalo's landmark head (`head.*`) starts fresh.
//! * ResNet: cephalo's backbone names are torchvision's (`conv1`, `bn1`, `layerL.B.*`,
//!   `downsample.0/1`), which timm's ResNets share; `fc` is the classifier.
use super::KeyShapes;

/// Prefixes of classification heads and necks: present in the files, never loaded.
pub const IGNORED_PREFIXES: [&str; 8] = [
    "incre_modules.",
    "downsamp_modules.",
    "final_layer.",
    "classifier.",
    "fc.",
    "head.",
    "keypoint_head.",
    "neck.",
];

/// Prefixes wrapping a backbone's keys in training checkpoints: mmpose's `backbone.`,
/// `DataParallel`'s `module.`.
const WRAPPER_PREFIXES: [&str; 2] = ["module.", "backbone."];

/// The key without the wrappers in front of it.
pub fn unwrapped(key: &str) -> &str {
    let mut k = key;
    for prefix in WRAPPER_PREFIXES {
        k = k.strip_prefix(prefix).unwrap_or(k);
    }
    k
}

/// Whether the file wraps its backbone in `backbone.` (mmpose): then every other key belongs
/// to another part of the model (neck, head) and is ignored.
pub fn has_backbone_prefix(sd: &KeyShapes) -> bool {
    sd.keys()
        .any(|k| k.strip_prefix("module.").unwrap_or(k).starts_with("backbone."))
}

/// cephalo's name for an HRNet file key (unwrapped), `None` if it has no place in cephalo's HRNet.
pub fn hrnet_name(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.split('.').collect();
    let (leaf, path) = parts.split_last()?;
    let name = match path {
        [stem @ ("conv1" | "bn1" | "conv2" | "bn2")] => format!("stem.{stem}"),
        ["layer1", k, rest @ ..] => format!("layer1.block{}.{}", index(k)?, rest.join(".")),
        [t, i, rest @ ..] if t.starts_with("transition") => {
            let layer = match rest {
                ["0"] | ["0", "0"] => "conv",
                ["1"] | ["0", "1"] => "bn",
                _ => return None,
            };
            format!("{t}.b{}.{layer}", index(i)?)
        }
        [s, m, "branches", b, k, layer] if s.starts_with("stage") => {
            format!("{s}.m{}.b{}.block{}.{layer}", index(m)?, index(b)?, index(k)?)
        }
        [s, m, "fuse_layers", i, j, rest @ ..] if s.starts_with("stage") => {
            let (m, i, j) = (index(m)?, index(i)?, index(j)?);
            let layer = |l: &str| match l {
                "0" => Some("conv"),
                "1" => Some("bn"),
                _ => None,
            };
            match rest {
                [l] if j > i => format!("{s}.m{m}.fuse.i{i}.j{j}.{}", layer(l)?),
                [k, l] if j < i => format!("{s}.m{m}.fuse.i{i}.j{j}.down{}.{}", index(k)?, layer(l)?),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(format!("{name}.{leaf}"))
}

/// cephalo's name for a ResNet file key (unwrapped): the same, for the backbone's keys.
pub fn resnet_name(key: &str) -> Option<String> {
    let backbone = ["conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4."];
    backbone.iter().any(|p| key.starts_with(p)).then(|| key.to_string())
}

fn index(s: &str) -> Option<usize> {
    s.parse().ok()
}

/// What a file holds, told from its keys and shapes, for error messages.
pub fn identify(sd: &KeyShapes) -> String {
    let get = |k: &str| {
        sd.iter()
            .find(|(key, _)| unwrapped(key) == k)
            .map(|(_, (shape, _))| shape.clone())
    };
    if let Some(shape) = get("transition1.0.0.weight") {
        return match shape.first() {
            Some(&w @ (18 | 32 | 48)) => format!("an HRNet-W{w} file"),
            Some(w) => format!("an HRNet file of width {w} (not a published configuration)"),
            None => "an HRNet file".to_string(),
        };
    }
    if get("layer4.0.conv1.weight").is_some() {
        let bottleneck = get("layer1.0.conv3.weight").is_some();
        let blocks: Vec<usize> = (1..=4)
            .map(|l| {
                let prefix = format!("layer{l}.");
                let mut ids: Vec<&str> = sd
                    .keys()
                    .filter_map(|k| unwrapped(k).strip_prefix(&prefix))
                    .filter_map(|rest| rest.split('.').next())
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                ids.len()
            })
            .collect();
        let depth = match (bottleneck, blocks.as_slice()) {
            (false, [2, 2, 2, 2]) => Some(18),
            (false, [3, 4, 6, 3]) => Some(34),
            (true, [3, 4, 6, 3]) => Some(50),
            (true, [3, 4, 23, 3]) => Some(101),
            (true, [3, 8, 36, 3]) => Some(152),
            _ => None,
        };
        let width = get("conv1.weight").and_then(|s| s.first().copied());
        return match (depth, width) {
            (Some(d), Some(64)) => format!("a ResNet-{d} file"),
            _ => format!(
                "a ResNet file with {} blocks {blocks:?} (not a standard depth)",
                if bottleneck { "Bottleneck" } else { "Basic" }
            ),
        };
    }
    "a file of neither an HRNet nor a ResNet backbone".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hrnet_keys_map_to_cephalo_names() {
        let cases = [
            ("conv1.weight", "stem.conv1.weight"),
            ("bn2.running_var", "stem.bn2.running_var"),
            ("layer1.0.downsample.1.bias", "layer1.block0.downsample.1.bias"),
            ("layer1.3.conv3.weight", "layer1.block3.conv3.weight"),
            ("transition1.0.0.weight", "transition1.b0.conv.weight"),
            ("transition1.0.1.weight", "transition1.b0.bn.weight"),
            ("transition1.1.0.0.weight", "transition1.b1.conv.weight"),
            ("transition3.3.0.1.running_mean", "transition3.b3.bn.running_mean"),
            ("stage3.2.branches.1.3.bn2.bias", "stage3.m2.b1.block3.bn2.bias"),
            ("stage4.0.fuse_layers.0.3.1.weight", "stage4.m0.fuse.i0.j3.bn.weight"),
            (
                "stage4.2.fuse_layers.3.0.2.0.weight",
                "stage4.m2.fuse.i3.j0.down2.conv.weight",
            ),
        ];
        for (file, ours) in cases {
            assert_eq!(hrnet_name(file).as_deref(), Some(ours), "{file}");
        }
        for stray in [
            "incre_modules.0.0.conv1.weight",
            "stage2.0.fuse_layers.0.1.2.weight",
            "transition1.0.2.weight",
        ] {
            assert_eq!(hrnet_name(stray), None, "{stray}");
        }
    }

    #[test]
    fn wrappers_are_removed() {
        assert_eq!(unwrapped("module.backbone.conv1.weight"), "conv1.weight");
        assert_eq!(unwrapped("backbone.layer1.0.conv1.weight"), "layer1.0.conv1.weight");
        assert_eq!(unwrapped("conv1.weight"), "conv1.weight");
    }
}
