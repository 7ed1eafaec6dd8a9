//! Streaming generation (docs/luna.md, "Causal attention"): a prompt runs
//! through the parallel form and leaves its final per-layer states in a
//! [`Decoder`]; each further token is one step of the recurrence that folds
//! it into those states. The state never grows with the position.

use crate::engine::causal::{Emit, Hooks, LayerState, Run};
use crate::engine::context::Engine;
use crate::engine::segments::Span;
use crate::engine::weights::{sinusoid_rows, GpuModel};
use crate::error::{LunaError, Result};
use crate::gpu::buffers;
use crate::gpu::recorder::Recorder;
use crate::gpu::scope::ErrorScopes;
use crate::input::Batch;
use crate::kernels::causal::Shape;

/// A streaming decoder: one state `(Sk, Sv)` per layer and head on the GPU
/// (and the local-context convolution's last inputs, when the model has
/// one), and the number of tokens consumed. Its size never depends on that number.
pub struct Decoder {
    /// Tokens consumed so far (prompt and generated).
    pub position: usize,
    model_id: u64,
    states: Vec<LayerState>,
}

impl Decoder {
    /// Bytes of GPU state this decoder holds (constant for a model).
    pub fn state_bytes(&self) -> u64 {
        self.states.iter().map(LayerState::bytes).sum()
    }
}

impl Engine {
    /// state it leaves, with the logits after the prompt's last token.
    pub async fn prefill(&mut self, model: &GpuModel, tokens: &[u32]) -> Result<(Decoder, Vec<f32>)> {
        if tokens.is_empty() {
            return Err(LunaError::Input("the prompt is empty; give at least one token".into()));
        }
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let batch = Batch::new(&model.config, &ids, 1, tokens.len())?;
        batch.check_for(&model.config)?;
        if batch.lengths[0] != tokens.len() {
            return Err(LunaError::Input(format!(
                "the prompt holds the padding token {}; a prompt must be real tokens only",
                model.config.padding_idx
            )));
        }
        let c = &model.config;
        let n = tokens.len();
        let states = self.zero_states(c, "decoder state")?;
        // The prompt, segment by segment when long, continues from the zero
        // states in `states`, which it leaves holding the state after its last token.
        let logits = self.sequence_pass(model, tokens, Some(&batch.positions), Some(&states), &[], Emit::LastLogits, Span::whole(tokens.len())).await?;
        // The prompt's scratch is sized for n rows, a step's for one: giving it
        // back frees that memory for the generation, and steps run measurably
        // faster on lavapipe with small scratch buffers bound (3.5 -> 2.9 ms a
        // token at the demo model's shape after a 1000-token prompt).
        if n > 1 {
            self.workspace.clear();
            self.ctx.reuse.forget_bind_groups();
        }
        Ok((Decoder { position: n, model_id: model.id, states }, logits))
    }

    /// Consumes one token with the streaming form; returns the logits after it.
    pub async fn step(&mut self, model: &GpuModel, decoder: &mut Decoder, token: u32) -> Result<Vec<f32>> {
        self.ctx.check_alive()?;
        model.causal()?;
        let c = &model.config;
        if decoder.model_id != model.id {
            return Err(LunaError::Input("this decoder was started with another model".into()));
        }
        if token as usize >= c.vocab_size || token as usize == c.padding_idx {
            return Err(LunaError::Input(format!(
                "token {token} is not a real token of this model (vocabulary [0, {}), padding {})",
                c.vocab_size, c.padding_idx
            )));
        }
        if c.learned_pos && decoder.position >= c.max_positions {
            return Err(LunaError::Input(format!(
                "the sequence is at max_positions = {} of this model's learned positions; it cannot grow further",
                c.max_positions
            )));
        }
        let position = (c.padding_idx + decoder.position + 1) as u32;
        // This token's position row: the learned table, or its sinusoid row in a reused buffer.
        let (pos_table, pos_index) = match &model.embed_positions {
            Some(t) => (t.buffer.clone(), position),
            None => {
                let row = self.workspace.get(&self.ctx, "step_position", c.embed_dim as u64 * 4);
                self.ctx.queue.write_buffer(&row, 0, bytemuck::cast_slice(&sinusoid_rows(c, &[position])));
                (row, 0)
            }
        };
        let shape = Shape {
            batch: 1,
            rows: 1,
            heads: c.num_heads,
            head_dim: c.head_dim(),
            proj_len: c.projection_length,
            chunk: 1,
            t_base: decoder.position,
        };
        let vocab = c.vocab_size;
        let scope = ErrorScopes::push(&self.ctx);
        let result = async {
            let Engine { ctx, cache, workspace, dummy, .. } = &mut *self;
            let mut rec = Recorder::new(ctx, cache, &dummy.buffer);
            let run = Run::new(model, &pos_table, shape, Some(&decoder.states))?;
            let x = run.record(&mut rec, workspace, &[token], &[pos_index], &[1], Hooks::default())?;
            let logits = run.logits(&mut rec, workspace, &x, 1, "last_logits");
            rec.submit();
            buffers::read_output(ctx, "logits", &logits, vocab).await
        }
        .await;
        let logits = self.close(scope, result).await?;
        decoder.position += 1;
        Ok(logits)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Engine {
    /// Blocking form of [`Engine::prefill`].
    pub fn prefill_blocking(&mut self, model: &GpuModel, tokens: &[u32]) -> Result<(Decoder, Vec<f32>)> {
        pollster::block_on(self.prefill(model, tokens))
    }
    /// Blocking form of [`Engine::step`].
    pub fn step_blocking(&mut self, model: &GpuModel, decoder: &mut Decoder, token: u32) -> Result<Vec<f32>> {
        pollster::block_on(self.step(model, decoder, token))
    }
}
