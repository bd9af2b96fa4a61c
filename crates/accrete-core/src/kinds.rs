//! One entry point for every built-in kind: train a batch (loss before the update, summed
//! gradient) and predict, over tensors named as in the layout. Workers call it with the
//! rows they pulled (hashed rows compacted to the batch's); the server's Predict with the
//! live or versioned tensors (hashed rows by their global index).
use crate::features::Batch;
use crate::glm::{self, GlmGrads, GlmParams, Link};
use crate::nn::{self, FmParams, MlpGrads, MlpParams};
use crate::spec::{ModelKind, ModelSpec};

/// The shape facts of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub kind: ModelKind,
    pub features: usize,
    pub outputs: usize,
    pub hidden: usize,
    pub factors: usize,
}

impl Dims {
    pub fn of(spec: &ModelSpec) -> Dims {
        Dims {
            kind: spec.kind,
            features: spec.features as usize,
            outputs: spec.outputs() as usize,
            hidden: spec.hidden as usize,
            factors: spec.factors as usize,
        }
    }

    /// Labels must be class indices below this (0 = any number / binary).
    pub fn classes(&self) -> usize {
        match self.kind {
            ModelKind::Softmax | ModelKind::Mlp if self.outputs >= 2 => self.outputs,
            _ => 0,
        }
    }
}

/// Tensors by layout name, owned (pulled parameters, or gradients).
#[derive(Debug, Clone, Default)]
pub struct Tensors {
    pub w: Vec<f32>,
    pub h: Vec<f32>,
    pub b: Vec<f32>,
    pub v: Vec<f32>,
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

impl Tensors {
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Vec<f32>> {
        Some(match name {
            "w" => &mut self.w,
            "h" => &mut self.h,
            "b" => &mut self.b,
            "v" => &mut self.v,
            "w1" => &mut self.w1,
            "b1" => &mut self.b1,
            "w2" => &mut self.w2,
            "b2" => &mut self.b2,
            _ => return None,
        })
    }

    pub fn get(&self, name: &str) -> &[f32] {
        match name {
            "w" => &self.w,
            "h" => &self.h,
            "b" => &self.b,
            "v" => &self.v,
            "w1" => &self.w1,
            "b1" => &self.b1,
            "w2" => &self.w2,
            "b2" => &self.b2,
            _ => &[],
        }
    }

    pub fn views(&self) -> Views<'_> {
        Views { w: &self.w, h: &self.h, b: &self.b, v: &self.v, w1: &self.w1, b1: &self.b1, w2: &self.w2, b2: &self.b2 }
    }
}

/// Borrowed tensors by layout name (empty when the model has none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Views<'a> {
    pub w: &'a [f32],
    pub h: &'a [f32],
    pub b: &'a [f32],
    pub v: &'a [f32],
    pub w1: &'a [f32],
    pub b1: &'a [f32],
    pub w2: &'a [f32],
    pub b2: &'a [f32],
}

impl<'a> Views<'a> {
    /// Views of a `Params`' weights.
    pub fn of_params(p: &'a crate::Params) -> Views<'a> {
        let t = |n: &str| p.tensor_index(n).map_or(&[][..], |i| &p.tensors[i].w[..]);
        Views { w: t("w"), h: t("h"), b: t("b"), v: t("v"), w1: t("w1"), b1: t("b1"), w2: t("w2"), b2: t("b2") }
    }
}

fn link(d: &Dims) -> Option<Link> {
    Link::of(d.kind, d.outputs)
}

/// Loss of the batch before any update (summed over rows) and its gradient into `g`
/// (reset to the shapes of the touched tensors; `hashed_rows` rows of `h` and `v`).
pub fn train(d: &Dims, p: &Views<'_>, batch: &Batch, sparse: &[u32], hashed_rows: usize, g: &mut Tensors) -> f64 {
    match d.kind {
        ModelKind::Linear | ModelKind::Logistic | ModelKind::Softmax => {
            let mut gg =
                GlmGrads { w: std::mem::take(&mut g.w), h: std::mem::take(&mut g.h), b: std::mem::take(&mut g.b) };
            let hashed = if p.h.is_empty() { 0 } else { hashed_rows };
            gg.reset(if p.w.is_empty() { 0 } else { d.features }, hashed, d.outputs);
            let params = GlmParams { outputs: d.outputs, w: p.w, h: p.h, b: p.b };
            let loss = glm::train(link(d).unwrap_or(Link::Identity), &params, batch, sparse, &mut gg);
            (g.w, g.h, g.b) = (gg.w, gg.h, gg.b);
            loss
        }
        ModelKind::Fm => {
            for (v, n) in [(&mut g.h, hashed_rows), (&mut g.v, hashed_rows * d.factors), (&mut g.b, 1)] {
                v.clear();
                v.resize(n, 0.0);
            }
            let params = FmParams { k: d.factors, h: p.h, v: p.v, b: p.b };
            nn::fm_train(&params, batch, sparse, &mut g.h, &mut g.v, &mut g.b)
        }
        ModelKind::Mlp => {
            let mut mg = MlpGrads {
                w1: std::mem::take(&mut g.w1),
                b1: std::mem::take(&mut g.b1),
                w2: std::mem::take(&mut g.w2),
                b2: std::mem::take(&mut g.b2),
            };
            mg.reset(d.features, d.hidden, d.outputs);
            let loss = nn::mlp_train(&mlp_params(d, p), batch, &mut mg);
            (g.w1, g.b1, g.w2, g.b2) = (mg.w1, mg.b1, mg.w2, mg.b2);
            loss
        }
    }
}

fn mlp_params<'a>(d: &Dims, p: &Views<'a>) -> MlpParams<'a> {
    MlpParams { features: d.features, hidden: d.hidden, outputs: d.outputs, w1: p.w1, b1: p.b1, w2: p.w2, b2: p.b2 }
}

/// Predictions: `d.outputs` values per row (value, probability, or class probabilities).
pub fn predict(d: &Dims, p: &Views<'_>, batch: &Batch, sparse: &[u32], out: &mut Vec<f32>) {
    match d.kind {
        ModelKind::Linear | ModelKind::Logistic | ModelKind::Softmax => {
            let params = GlmParams { outputs: d.outputs, w: p.w, h: p.h, b: p.b };
            glm::predict(link(d).unwrap_or(Link::Identity), &params, batch, sparse, out)
        }
        ModelKind::Fm => nn::fm_predict(&FmParams { k: d.factors, h: p.h, v: p.v, b: p.b }, batch, sparse, out),
        ModelKind::Mlp => nn::mlp_predict(&mlp_params(d, p), batch, out),
    }
}
