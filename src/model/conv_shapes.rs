//! `cephalo model conv-shapes`: every distinct convolution of a network's graph, with how often
//! it occurs and its multiply-accumulates. The list (`--json`) is the input of
//! `benches/cudnn_reference.py`, which times the same shapes with cuDNN.
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::backend::ConvParams;
use crate::graph::{Graph, Op};

/// Convolution or transposed convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvKind {
    Conv,
    ConvTranspose,
}

impl ConvKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConvKind::Conv => "conv",
            ConvKind::ConvTranspose => "conv_transpose",
        }
    }
}

/// One distinct convolution: input `n x h x w x c_in`, a `kh x kw` kernel with `stride` and
/// symmetric zero padding `pad`, output `n x out_h x out_w x c_out`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvShape {
    pub kind: ConvKind,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub out_h: usize,
    pub out_w: usize,
    /// How many nodes of the graph have exactly this shape.
    pub count: usize,
    /// Forward multiply-accumulates of one occurrence (the whole batch).
    pub macs: u64,
    /// It reads the graph input: training needs no input gradient (dgrad) for it.
    pub reads_input: bool,
}

impl ConvShape {
    /// Multiply-accumulates of every occurrence together.
    pub fn total_macs(&self) -> u64 {
        self.macs * self.count as u64
    }

    fn same_shape(&self, other: &ConvShape) -> bool {
        (self.kind, self.n, self.h, self.w, self.c_in, self.c_out)
            == (other.kind, other.n, other.h, other.w, other.c_in, other.c_out)
            && (self.kh, self.kw, self.stride, self.pad, self.reads_input)
                == (other.kh, other.kw, other.stride, other.pad, other.reads_input)
    }
}

/// The distinct convolutions of `g` in order of first occurrence. Fused inference nodes
/// (conv + batch norm) count as convolutions; bias does not distinguish shapes.
pub fn conv_shapes(g: &Graph) -> Vec<ConvShape> {
    let mut out: Vec<ConvShape> = Vec::new();
    for (i, node) in g.nodes.iter().enumerate() {
        let (kind, p): (ConvKind, &ConvParams) = match &node.op {
            Op::Conv { p, .. } | Op::ConvBnEval { p, .. } => (ConvKind::Conv, p),
            Op::ConvTranspose { p, .. } => (ConvKind::ConvTranspose, p),
            _ => continue,
        };
        let x = g.shape(node.inputs[0]);
        let shape = ConvShape {
            kind,
            n: x.n,
            h: x.h,
            w: x.w,
            c_in: p.c_in,
            c_out: p.c_out,
            kh: p.kh,
            kw: p.kw,
            stride: p.stride,
            pad: p.pad,
            out_h: node.shape.h,
            out_w: node.shape.w,
            count: 1,
            macs: g.node_macs(i),
            reads_input: node.inputs[0] == g.input,
        };
        match out.iter_mut().find(|s| s.same_shape(&shape)) {
            Some(s) => s.count += 1,
            None => out.push(shape),
        }
    }
    out
}

/// An aligned table of the shapes and their totals.
pub fn conv_shapes_table(shapes: &[ConvShape]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>3} {:>5} {:>5} {:>5} {:>5} {:>5} {:>6} {:>3} {:>5} {:>5} {:>5} {:>14} {:>7}",
        "kind",
        "n",
        "h",
        "w",
        "c_in",
        "c_out",
        "kh x kw",
        "stride",
        "pad",
        "out_h",
        "out_w",
        "count",
        "MACs each",
        "G total"
    );
    for s in shapes {
        let _ = writeln!(
            out,
            "{:<15} {:>3} {:>5} {:>5} {:>5} {:>5} {:>7} {:>6} {:>3} {:>5} {:>5} {:>5} {:>14} {:>7.2}",
            s.kind.as_str(),
            s.n,
            s.h,
            s.w,
            s.c_in,
            s.c_out,
            format!("{}x{}", s.kh, s.kw),
            s.stride,
            s.pad,
            s.out_h,
            s.out_w,
            s.count,
            s.macs,
            s.total_macs() as f64 / 1e9
        );
    }
    let total: u64 = shapes.iter().map(ConvShape::total_macs).sum();
    let _ = writeln!(
        out,
        "distinct shapes: {}, convolutions: {}, multiply-accumulates: {:.2} G per batch",
        shapes.len(),
        shapes.iter().map(|s| s.count).sum::<usize>(),
        total as f64 / 1e9
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    /// The graph of model `name` (29 landmarks, 256 x 256) at `batch`, and its convolution shapes.
    fn graph_and_shapes(name: &str, batch: usize) -> (Graph, Vec<ConvShape>) {
        let g = ModelConfig::new(name, 1, 29, [256, 256], batch)
            .unwrap()
            .build()
            .unwrap();
        let shapes = conv_shapes(&g);
        (g, shapes)
    }

    #[test]
    fn resnet18_stem_occurs_once_and_deconvs_are_listed() {
        let (_, shapes) = graph_and_shapes("resnet18", 2);
        let stem: Vec<&ConvShape> = shapes.iter().filter(|s| s.kh == 7).collect();
        assert_eq!(stem.len(), 1);
        let s = stem[0];
        assert_eq!(
            (s.kind, s.n, s.h, s.w, s.c_in, s.c_out),
            (ConvKind::Conv, 2, 256, 256, 1, 64)
        );
        assert_eq!((s.stride, s.pad, s.out_h, s.out_w, s.count), (2, 3, 128, 128, 1));
        assert_eq!(s.macs, 2 * 128 * 128 * 64 * 49);
        // The three 4x4 stride-2 transposed convolutions all differ in input size.
        let deconvs: Vec<&ConvShape> = shapes.iter().filter(|s| s.kind == ConvKind::ConvTranspose).collect();
        assert_eq!(deconvs.len(), 3);
        assert_eq!((deconvs[0].h, deconvs[0].out_h, deconvs[2].out_h), (8, 16, 64));
        // layer1 of ResNet-18: four identical 3x3 64->64 convolutions at 1/4.
        let l1 = shapes
            .iter()
            .find(|s| s.kh == 3 && s.c_in == 64 && s.c_out == 64 && s.h == 64);
        assert_eq!(l1.map(|s| s.count), Some(4));
    }

    #[test]
    fn hrnet_totals_match_the_graph() {
        let (g, shapes) = graph_and_shapes("hrnet-w32", 1);
        let convs = g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Conv { .. } | Op::ConvTranspose { .. }))
            .count();
        assert_eq!(shapes.iter().map(|s| s.count).sum::<usize>(), convs);
        assert_eq!(shapes.iter().map(ConvShape::total_macs).sum::<u64>(), g.macs());
        // Far fewer distinct shapes than convolutions: the branches repeat their blocks.
        assert!(shapes.len() * 4 < convs, "{} distinct of {convs}", shapes.len());
        for (i, a) in shapes.iter().enumerate() {
            assert!(shapes[i + 1..].iter().all(|b| !a.same_shape(b)), "duplicate {a:?}");
        }
        // The fused inference graph has the same convolutions.
        let fused = conv_shapes(&g.fuse_for_inference());
        assert_eq!(fused, shapes);
        let table = conv_shapes_table(&shapes);
        assert!(table.contains(&format!("distinct shapes: {}, convolutions: {convs}", shapes.len())));
    }
}
