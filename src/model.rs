//! A Luna model: its config and weights, loaded from (and saved to) the
//! safetensors model file of docs/luna.md ("The model file"), with the authors' tensor names.

use crate::config::{Config, ModelKind};
use crate::error::{LunaError, Result};
use crate::tensors::{self, Named};
use safetensors::SafeTensors;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The largest weight magnitude a model file may hold: `2^32`. Trained
/// weights are orders of magnitude smaller; beyond it a product of two
/// weights summed over a wide row approaches float32's overflow (3.4e38).
pub const MAX_WEIGHT: f32 = 4_294_967_296.0;

/// `y = x · W^T + b`, `weight` is `[out, inp]` row-major.
#[derive(Clone, Debug)]
pub struct Linear {
    pub out: usize,
    pub inp: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// LayerNorm affine parameters.
#[derive(Clone, Debug)]
pub struct Norm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Key/value projections: one shared (`tie_kv`) or two separate ones.
#[derive(Clone, Debug)]
pub enum KvProj {
    Tied(Linear),
    Separate { k: Linear, v: Linear },
}

impl KvProj {
    pub fn k(&self) -> &Linear {
        match self {
            KvProj::Tied(c) => c,
            KvProj::Separate { k, .. } => k,
        }
    }
    pub fn v(&self) -> &Linear {
        match self {
            KvProj::Tied(c) => c,
            KvProj::Separate { v, .. } => v,
        }
    }
}

/// The weights of one encoder layer (`layers.{i}.`).
#[derive(Clone, Debug)]
pub struct Layer {
    pub q_proj: Linear,
    pub pq_proj: Linear,
    /// `pc_proj`, or `pk_proj`/`pv_proj`: the pack keys/values from X.
    pub pack_kv: KvProj,
    /// `c_proj`, or `k_proj`/`v_proj`: the unpack keys/values from Yp.
    pub unpack_kv: KvProj,
    pub out_proj: Linear,
    pub self_attn_layer_norm: Norm,
    pub self_atten_proj_layer_norm: Norm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub final_layer_norm: Norm,
}

/// The weights of one causal LM layer (`layers.{i}.`, docs/luna.md, "The causal LM").
#[derive(Clone, Debug)]
pub struct CausalLayer {
    pub q_proj: Linear,
    pub pq_proj: Linear,
    /// Gives the pack weights' keys: `A = softplus_ln2(pc_proj(X)_h · Q_P,h^T)`.
    pub pc_proj: Linear,
    /// `c_proj`, or `k_proj`/`v_proj`.
    pub kv: KvProj,
    pub out_proj: Linear,
    pub self_attn_layer_norm: Norm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub final_layer_norm: Norm,
    /// `self_attn.conv.weight [d, conv_width]` when the config has a
    /// `conv_width` (docs/luna.md, "Local context"): column `j` multiplies the
    /// attention input `conv_width - 1 - j` tokens back.
    pub conv: Option<Vec<f32>>,
}

/// A loaded Luna model: an encoder (`layers`) or a causal LM (`causal_layers`).
#[derive(Clone, Debug)]
pub struct Model {
    pub config: Config,
    /// `[vocab_size, d]`
    pub embed_tokens: Vec<f32>,
    /// `[max_positions + padding_idx + 1, d]` when `learned_pos`.
    pub embed_positions: Option<Vec<f32>>,
    /// `[l, d]`
    pub projected_embeddings: Vec<f32>,
    pub emb_layer_norm: Option<Norm>,
    pub proj_emb_layer_norm: Option<Norm>,
    pub layer_norm: Option<Norm>,
    pub proj_layer_norm: Option<Norm>,
    /// Encoder layers, one per stored layer: `num_layers` of them, or one with
    /// `tie_layer_weights`. Empty for a causal LM.
    pub layers: Vec<Layer>,
    /// Causal LM layers, stored like `layers`. Empty for an encoder.
    pub causal_layers: Vec<CausalLayer>,
    /// `[vocab_size, d]`, a causal LM's output projection when not tied to `embed_tokens`.
    pub output_projection: Option<Vec<f32>>,
    /// The file's metadata besides `luna.config` (e.g. `luna.tokenizer`), kept when saving.
    pub metadata: HashMap<String, String>,
}

impl Model {
    /// The weights of layer `i` (layer 0 for every `i` with `tie_layer_weights`).
    pub fn layer(&self, i: usize) -> &Layer {
        &self.layers[if self.config.tie_layer_weights { 0 } else { i }]
    }

    /// The causal layer `i` (layer 0 for every `i` with `tie_layer_weights`).
    pub fn causal_layer(&self, i: usize) -> &CausalLayer {
        &self.causal_layers[if self.config.tie_layer_weights { 0 } else { i }]
    }

    /// The `[vocab_size, d]` matrix that turns a causal LM's states into logits.
    pub fn output_weight(&self) -> &[f32] {
        self.output_projection.as_deref().unwrap_or(&self.embed_tokens)
    }

    pub fn load(path: &Path) -> Result<Model> {
        let bytes = tensors::read_file(path)?;
        Model::from_bytes(&bytes)
    }

    /// Parses a model file held in memory, checking every tensor against the config.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        let st = tensors::parse(bytes, "model")?;
        let meta = tensors::metadata(bytes)?;
        let text = meta.get("luna.config").ok_or_else(|| {
            LunaError::Model("the file's metadata has no \"luna.config\" key; is this a luna model file?".into())
        })?;
        let config = Config::from_json(text)?;
        let mut metadata = meta.clone();
        metadata.remove("luna.config");
        let mut r = Reader { st: &st, used: HashSet::new() };
        let c = &config;
        let d = c.embed_dim;
        let embed_tokens = r.get("embed_tokens.weight", &[c.vocab_size, d])?;
        let embed_positions = if c.learned_pos {
            Some(r.get("embed_positions.weight", &[c.position_rows(), d])?)
        } else {
            None
        };
        let projected_embeddings = r.get("projected_embeddings", &[c.projection_length, d])?;
        let causal = c.model == ModelKind::CausalLm;
        let (emb_layer_norm, proj_emb_layer_norm) = if c.layernorm_embedding {
            (Some(r.norm("emb_layer_norm", d)?), Some(r.norm("proj_emb_layer_norm", d)?))
        } else {
            (None, None)
        };
        let layer_norm = if c.normalize_before { Some(r.norm("layer_norm", d)?) } else { None };
        let proj_layer_norm = if c.normalize_before && !causal { Some(r.norm("proj_layer_norm", d)?) } else { None };
        let stored = if c.tie_layer_weights { 1 } else { c.num_layers };
        let (layers, causal_layers) = if causal {
            (Vec::new(), (0..stored).map(|i| r.causal_layer(c, i)).collect::<Result<Vec<_>>>()?)
        } else {
            ((0..stored).map(|i| r.layer(c, i)).collect::<Result<Vec<_>>>()?, Vec::new())
        };
        let output_projection = if causal && !c.tie_output_embedding {
            Some(r.get("output_projection.weight", &[c.vocab_size, d])?)
        } else {
            None
        };
        for name in st.names() {
            if !r.used.contains(name) {
                log::warn!("model file: ignoring tensor {name:?}, which this config does not use");
            }
        }
        Ok(Model {
            config,
            embed_tokens,
            embed_positions,
            projected_embeddings,
            emb_layer_norm,
            proj_emb_layer_norm,
            layer_norm,
            proj_layer_norm,
            layers,
            causal_layers,
            output_projection,
            metadata,
        })
    }

    /// Every tensor of the model under its file name.
    pub fn named_tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        fn lin<'m>(out: &mut Vec<(String, Vec<usize>, &'m [f32])>, name: String, w: &'m Linear) {
            out.push((format!("{name}.weight"), vec![w.out, w.inp], &w.weight));
            out.push((format!("{name}.bias"), vec![w.out], &w.bias));
        }
        fn norm<'m>(out: &mut Vec<(String, Vec<usize>, &'m [f32])>, name: String, n: &'m Norm) {
            out.push((format!("{name}.weight"), vec![n.weight.len()], &n.weight));
            out.push((format!("{name}.bias"), vec![n.bias.len()], &n.bias));
        }
        let d = self.config.embed_dim;
        let mut out: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
        out.push(("embed_tokens.weight".into(), vec![self.config.vocab_size, d], &self.embed_tokens));
        if let Some(p) = &self.embed_positions {
            out.push(("embed_positions.weight".into(), vec![self.config.position_rows(), d], p));
        }
        out.push(("projected_embeddings".into(), vec![self.config.projection_length, d], &self.projected_embeddings));
        for (name, n) in [
            ("emb_layer_norm", &self.emb_layer_norm),
            ("proj_emb_layer_norm", &self.proj_emb_layer_norm),
            ("layer_norm", &self.layer_norm),
            ("proj_layer_norm", &self.proj_layer_norm),
        ] {
            if let Some(n) = n {
                norm(&mut out, name.into(), n);
            }
        }
        for (i, l) in self.layers.iter().enumerate() {
            let a = format!("layers.{i}.self_attn.");
            lin(&mut out, format!("{a}q_proj"), &l.q_proj);
            lin(&mut out, format!("{a}pq_proj"), &l.pq_proj);
            match &l.pack_kv {
                KvProj::Tied(c) => lin(&mut out, format!("{a}pc_proj"), c),
                KvProj::Separate { k, v } => {
                    lin(&mut out, format!("{a}pk_proj"), k);
                    lin(&mut out, format!("{a}pv_proj"), v);
                }
            }
            match &l.unpack_kv {
                KvProj::Tied(c) => lin(&mut out, format!("{a}c_proj"), c),
                KvProj::Separate { k, v } => {
                    lin(&mut out, format!("{a}k_proj"), k);
                    lin(&mut out, format!("{a}v_proj"), v);
                }
            }
            lin(&mut out, format!("{a}out_proj"), &l.out_proj);
            let p = format!("layers.{i}.");
            lin(&mut out, format!("{p}fc1"), &l.fc1);
            lin(&mut out, format!("{p}fc2"), &l.fc2);
            norm(&mut out, format!("{p}self_attn_layer_norm"), &l.self_attn_layer_norm);
            norm(&mut out, format!("{p}self_atten_proj_layer_norm"), &l.self_atten_proj_layer_norm);
            norm(&mut out, format!("{p}final_layer_norm"), &l.final_layer_norm);
        }
        for (i, l) in self.causal_layers.iter().enumerate() {
            let a = format!("layers.{i}.self_attn.");
            lin(&mut out, format!("{a}q_proj"), &l.q_proj);
            lin(&mut out, format!("{a}pq_proj"), &l.pq_proj);
            lin(&mut out, format!("{a}pc_proj"), &l.pc_proj);
            match &l.kv {
                KvProj::Tied(c) => lin(&mut out, format!("{a}c_proj"), c),
                KvProj::Separate { k, v } => {
                    lin(&mut out, format!("{a}k_proj"), k);
                    lin(&mut out, format!("{a}v_proj"), v);
                }
            }
            lin(&mut out, format!("{a}out_proj"), &l.out_proj);
            if let Some(w) = &l.conv {
                out.push((format!("{a}conv.weight"), vec![d, self.config.conv_width], w));
            }
            let p = format!("layers.{i}.");
            lin(&mut out, format!("{p}fc1"), &l.fc1);
            lin(&mut out, format!("{p}fc2"), &l.fc2);
            norm(&mut out, format!("{p}self_attn_layer_norm"), &l.self_attn_layer_norm);
            norm(&mut out, format!("{p}final_layer_norm"), &l.final_layer_norm);
        }
        if let Some(w) = &self.output_projection {
            out.push(("output_projection.weight".into(), vec![self.config.vocab_size, d], w));
        }
        out
    }

    /// The model file's bytes: f32 tensors and the `luna.config` metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let named = self.named_tensors();
        let views: Vec<Named> =
            named.iter().map(|(n, s, d)| Named { name: n, shape: s.clone(), data: d }).collect();
        let mut meta = self.metadata.clone();
        meta.insert("luna.config".to_string(), self.config.to_json());
        tensors::serialize_f32(&views, Some(meta))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        tensors::write_file(path, &self.to_bytes()?)
    }
}

struct Reader<'a, 'b> {
    st: &'a SafeTensors<'b>,
    used: HashSet<String>,
}

impl Reader<'_, '_> {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let view = self
            .st
            .tensor(name)
            .map_err(|_| LunaError::Model(format!("missing tensor {name:?} (expected shape {shape:?})")))?;
        if view.shape() != shape {
            return Err(LunaError::Model(format!(
                "tensor {name:?} has shape {:?}, the config needs {shape:?}",
                view.shape()
            )));
        }
        let data = tensors::view_to_f32(name, &view)?;
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(LunaError::Model(format!(
                "tensor {name:?} holds a value at index {i} that is not a finite float32 (NaN, infinite, or beyond float32's range)"
            )));
        }
        if let Some(i) = data.iter().position(|v| v.abs() > MAX_WEIGHT) {
            return Err(LunaError::Model(format!(
                "tensor {name:?} holds {:e} at index {i}: weights beyond ±{MAX_WEIGHT:e} overflow float32 in the engine's arithmetic; is the file corrupt?",
                data[i]
            )));
        }
        self.used.insert(name.to_string());
        Ok(data)
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear {
            out,
            inp,
            weight: self.get(&format!("{name}.weight"), &[out, inp])?,
            bias: self.get(&format!("{name}.bias"), &[out])?,
        })
    }

    fn norm(&mut self, name: &str, d: usize) -> Result<Norm> {
        Ok(Norm { weight: self.get(&format!("{name}.weight"), &[d])?, bias: self.get(&format!("{name}.bias"), &[d])? })
    }

    fn kv(&mut self, p: &str, tied: bool, c: &str, k: &str, v: &str, d: usize) -> Result<KvProj> {
        Ok(if tied {
            KvProj::Tied(self.linear(&format!("{p}{c}"), d, d)?)
        } else {
            KvProj::Separate { k: self.linear(&format!("{p}{k}"), d, d)?, v: self.linear(&format!("{p}{v}"), d, d)? }
        })
    }

    fn causal_layer(&mut self, c: &Config, i: usize) -> Result<CausalLayer> {
        let p = format!("layers.{i}.");
        let a = format!("{p}self_attn.");
        let (d, f) = (c.embed_dim, c.ffn_embed_dim);
        Ok(CausalLayer {
            q_proj: self.linear(&format!("{a}q_proj"), d, d)?,
            pq_proj: self.linear(&format!("{a}pq_proj"), d, d)?,
            pc_proj: self.linear(&format!("{a}pc_proj"), d, d)?,
            kv: self.kv(&a, c.tie_kv, "c_proj", "k_proj", "v_proj", d)?,
            out_proj: self.linear(&format!("{a}out_proj"), d, d)?,
            self_attn_layer_norm: self.norm(&format!("{p}self_attn_layer_norm"), d)?,
            fc1: self.linear(&format!("{p}fc1"), f, d)?,
            fc2: self.linear(&format!("{p}fc2"), d, f)?,
            final_layer_norm: self.norm(&format!("{p}final_layer_norm"), d)?,
            conv: match c.conv_width {
                0 => None,
                k => Some(self.get(&format!("{a}conv.weight"), &[d, k])?),
            },
        })
    }

    fn layer(&mut self, c: &Config, i: usize) -> Result<Layer> {
        let p = format!("layers.{i}.");
        let a = format!("{p}self_attn.");
        let (d, f) = (c.embed_dim, c.ffn_embed_dim);
        Ok(Layer {
            q_proj: self.linear(&format!("{a}q_proj"), d, d)?,
            pq_proj: self.linear(&format!("{a}pq_proj"), d, d)?,
            pack_kv: self.kv(&a, c.tie_kv, "pc_proj", "pk_proj", "pv_proj", d)?,
            unpack_kv: self.kv(&a, c.tie_kv, "c_proj", "k_proj", "v_proj", d)?,
            out_proj: self.linear(&format!("{a}out_proj"), d, d)?,
            self_attn_layer_norm: self.norm(&format!("{p}self_attn_layer_norm"), d)?,
            self_atten_proj_layer_norm: self.norm(&format!("{p}self_atten_proj_layer_norm"), d)?,
            fc1: self.linear(&format!("{p}fc1"), f, d)?,
            fc2: self.linear(&format!("{p}fc2"), d, f)?,
            final_layer_norm: self.norm(&format!("{p}final_layer_norm"), d)?,
        })
    }
}
