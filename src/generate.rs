//! The generation loop of a causal LM with a tokenizer, shared by `luna generate`
//! (src/bin/luna/generate.rs) and the browser's `LunaModel.generate`
//! (src/web/model.rs).
//!
//! [`Generation::new`] checks a prompt and the sampling settings; [`Generation::run`]
//! runs the prompt through a [`TokenModel`], then samples one token at a time
//! (among the ids the tokenizer may generate), streams the text of each token
//! to the caller's callback, and stops at the first of: `eos`, `max_tokens`,
//! the callback asking to stop, or (with learned positions) the last position
//! the model has learned. The [`Outcome`] says which ([`Stop`]) and how long
//! each phase took; each front end words it its own way.
//!
//! The loop is `async` and never blocks: the browser awaits it on its event
//! loop, natively `pollster::block_on` drives it. What runs the model is a
//! [`TokenModel`]: the GPU's streaming decoder (`Engine::prefill` /
//! `Engine::step`), or in the CLI also the float64 CPU reference.

use crate::config::Config;
use crate::error::{LunaError, Result};
use crate::sample::Sampler;
use crate::tokenizer::Tokenizer;
use std::ops::ControlFlow;

/// A causal LM that consumes tokens one at a time and keeps its own state
/// between them (a streaming decoder).
///
/// The futures are awaited one at a time on one thread, so they need not be
/// `Send`. An implementation that borrows shared state (the browser's engine)
/// should hold that borrow only inside a call: the loop runs the caller's
/// callback between calls, and other work may run then.
#[allow(async_fn_in_trait)] // single-threaded by design: see above
pub trait TokenModel {
    /// The error of a call: a [`LunaError`], or what the front end adds to it
    /// (the browser's "busy", a JavaScript exception thrown by the callback).
    type Error: From<LunaError>;

    /// Runs the prompt (at least one token) from a fresh state; returns the
    /// logits of the token after its last one.
    async fn prefill(&mut self, tokens: &[u32]) -> std::result::Result<Vec<f64>, Self::Error>;

    /// Consumes one more token; returns the logits of the token after it.
    async fn step(&mut self, token: u32) -> std::result::Result<Vec<f64>, Self::Error>;

    /// Bytes of the state carried between tokens (constant whatever the position).
    fn state_bytes(&self) -> u64;
}

/// How to sample, and how much.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    pub temperature: f64,
    /// Sample only among the `top_k` most likely tokens.
    pub top_k: Option<usize>,
    /// Seed of the sampler: the same seed gives the same tokens.
    pub seed: u64,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// `max_tokens` tokens were generated (the value is `max_tokens`).
    MaxTokens(usize),
    /// The model sampled `eos` (not part of the text).
    Eos,
    /// The caller's callback asked to stop.
    Caller,
    /// With learned positions, the next token would pass `max_positions` (the value).
    MaxPositions(usize),
}

/// What the callback learns after each generated token.
#[derive(Clone, Copy, Debug)]
pub struct TokenEvent<'a> {
    pub token: u32,
    /// The text this token completes: often one character, empty inside a
    /// multi-byte character.
    pub piece: &'a str,
    /// Tokens generated so far, this one included (1 for the first).
    pub index: usize,
    /// Tokens the model has consumed, prompt and generated. The token has
    /// already entered the model, unless generation ends with it.
    pub position: usize,
    /// [`TokenModel::state_bytes`] after this token.
    pub state_bytes: u64,
    /// Milliseconds since the first generated token was asked for.
    pub ms: f64,
}

/// The result of a generation and its statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// All the generated text: the pieces of every event, then [`Outcome::tail`].
    pub text: String,
    /// Text held back until the end (an incomplete character, as U+FFFD): the
    /// caller shows it after the last piece. Usually empty.
    pub tail: String,
    pub stop: Stop,
    /// Tokens of the prompt, bos included.
    pub prompt_tokens: usize,
    /// Tokens generated (eos not counted).
    pub generated: usize,
    /// Milliseconds the prompt took.
    pub prefill_ms: f64,
    /// Milliseconds from the first sample to the end.
    pub decode_ms: f64,
    /// [`TokenModel::state_bytes`] at the end.
    pub state_bytes: u64,
}

impl Outcome {
    /// Generated tokens per second of decoding (0 when no time passed).
    pub fn tokens_per_second(&self) -> f64 {
        if self.decode_ms > 0.0 {
            self.generated as f64 / (self.decode_ms / 1e3)
        } else {
            0.0
        }
    }
}

/// A checked prompt and sampler, ready to run.
#[derive(Debug)]
pub struct Generation<'a> {
    config: &'a Config,
    tok: &'a Tokenizer,
    prompt: Vec<u32>,
    sampler: Sampler,
    max_tokens: usize,
}

impl<'a> Generation<'a> {
    /// Checks the settings and the prompt for a causal LM of `config` with
    /// tokenizer `tok`. The prompt is encoded after `bos` when the tokenizer
    /// has one; it may be empty only then. With learned positions it must fit
    /// `max_positions`. Padding, `bos` and ids that are neither a byte nor
    /// `eos` are never generated.
    pub fn new(config: &'a Config, tok: &'a Tokenizer, prompt: &str, settings: &Settings) -> Result<Generation<'a>> {
        let sampler = Sampler::new(settings.temperature, settings.top_k, settings.seed)?;
        if prompt.is_empty() && tok.bos.is_none() {
            return Err(LunaError::Input(
                "empty prompt: this model's tokenizer has no bos token to start from; give a prompt of at least one character".into(),
            ));
        }
        let tokens = tok.encode_with_bos(prompt.as_bytes());
        if config.learned_pos && tokens.len() > config.max_positions {
            return Err(LunaError::Input(format!(
                "the prompt is {} tokens{}, more than max_positions = {} of this model's learned positions; shorten it",
                tokens.len(),
                if tok.bos.is_some() { " with bos" } else { "" },
                config.max_positions
            )));
        }
        let allowed: Vec<bool> = (0..config.vocab_size as u32).map(|i| tok.can_generate(i)).collect();
        Ok(Generation { config, tok, prompt: tokens, sampler: sampler.restrict(allowed), max_tokens: settings.max_tokens })
    }

    /// The prompt's tokens (bos first when the tokenizer has one).
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// Runs the prompt through `model`, then generates. After each token,
    /// `on_token` gets its [`TokenEvent`] (the token has entered the model by
    /// then, so the event reports the state after it) and says whether to go
    /// on; an error from it ends the generation with that error. `now_ms` is
    /// the clock, in milliseconds.
    pub async fn run<M, F>(mut self, model: &mut M, now_ms: impl Fn() -> f64, mut on_token: F) -> std::result::Result<Outcome, M::Error>
    where
        M: TokenModel,
        F: FnMut(&TokenEvent<'_>) -> std::result::Result<ControlFlow<()>, M::Error>,
    {
        let c = self.config;
        let t0 = now_ms();
        let mut logits = model.prefill(&self.prompt).await?;
        let prefill_ms = now_ms() - t0;

        let t1 = now_ms();
        let mut stream = self.tok.stream();
        let mut text = String::new();
        let mut generated = 0usize;
        let mut consumed = self.prompt.len();
        let mut stop = Stop::MaxTokens(self.max_tokens);
        while generated < self.max_tokens {
            let next = self.sampler.sample(&logits)?;
            if Some(next) == self.tok.eos {
                stop = Stop::Eos;
                break;
            }
            generated += 1;
            let piece = stream.push(next);
            text.push_str(&piece);
            let last = generated == self.max_tokens;
            let at_limit = c.learned_pos && consumed + 1 > c.max_positions;
            if !last && !at_limit {
                // The token enters the model before its event, so the event reports the state after it.
                logits = model.step(next).await?;
                consumed += 1;
            }
            let event = TokenEvent {
                token: next,
                piece: &piece,
                index: generated,
                position: consumed,
                state_bytes: model.state_bytes(),
                ms: now_ms() - t1,
            };
            if on_token(&event)?.is_break() {
                stop = Stop::Caller;
                break;
            }
            if at_limit && !last {
                stop = Stop::MaxPositions(c.max_positions);
                break;
            }
        }
        let tail = stream.finish();
        text.push_str(&tail);
        Ok(Outcome {
            text,
            tail,
            stop,
            prompt_tokens: self.prompt.len(),
            generated,
            prefill_ms,
            decode_ms: now_ms() - t1,
            state_bytes: model.state_bytes(),
        })
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Bytes from id 3, bos 0, padding 1, eos 2; ids 259.. are unused.
    const BOS: Tokenizer = Tokenizer { offset: 3, pad: Some(1), bos: Some(0), eos: Some(2) };
    /// Bytes from id 2, padding 1, no bos, no eos.
    const NO_BOS: Tokenizer = Tokenizer { offset: 2, pad: Some(1), bos: None, eos: None };
    const VOCAB: usize = 300;

    fn config(learned_pos: bool, max_positions: usize) -> Config {
        let json = serde_json::json!({
            "model": "causal_lm", "vocab_size": VOCAB, "embed_dim": 8, "ffn_embed_dim": 8, "num_layers": 1,
            "num_heads": 2, "projection_length": 2, "max_positions": max_positions, "padding_idx": 1,
            "learned_pos": learned_pos,
        });
        Config::from_json(&json.to_string()).unwrap()
    }

    fn greedy(max_tokens: usize) -> Settings {
        Settings { max_tokens, temperature: 0.0, top_k: None, seed: 0 }
    }

    /// A model whose logits after `k` generated tokens favour `script[k]` (eos
    /// past its end), though padding, bos and an unused id score higher still.
    struct Fake {
        script: Vec<u32>,
        eos: u32,
        prompt: usize,
        /// Every token the model has consumed.
        seen: Vec<u32>,
    }

    impl Fake {
        fn new(tok: &Tokenizer, text: &[u8]) -> Fake {
            Fake { script: tok.encode_bytes(text), eos: tok.eos.unwrap_or(0), prompt: 0, seen: Vec::new() }
        }

        fn logits(&self) -> Vec<f64> {
            let mut l = vec![0.0; VOCAB];
            l[1] = 30.0;
            l[0] = 20.0;
            l[VOCAB - 1] = 15.0;
            l[self.script.get(self.seen.len() - self.prompt).copied().unwrap_or(self.eos) as usize] = 10.0;
            l
        }
    }

    impl TokenModel for Fake {
        type Error = LunaError;
        async fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f64>> {
            self.prompt = tokens.len();
            self.seen = tokens.to_vec();
            Ok(self.logits())
        }
        async fn step(&mut self, token: u32) -> Result<Vec<f64>> {
            self.seen.push(token);
            Ok(self.logits())
        }
        fn state_bytes(&self) -> u64 {
            64
        }
    }

    /// One event as the callback saw it: token, piece, index, position.
    type Seen = (u32, String, usize, usize);

    /// Runs a generation with a clock that advances 1 ms per reading; the
    /// callback stops at event `stop_at` when given.
    fn run(c: &Config, tok: &Tokenizer, fake: &mut Fake, prompt: &str, s: Settings, stop_at: Option<usize>) -> (Outcome, Vec<Seen>) {
        let clock = Cell::new(0.0);
        let now = || {
            clock.set(clock.get() + 1.0);
            clock.get()
        };
        let mut events = Vec::new();
        let g = Generation::new(c, tok, prompt, &s).unwrap();
        let out = pollster::block_on(g.run(fake, now, |e| {
            events.push((e.token, e.piece.to_string(), e.index, e.position));
            Ok(if Some(e.index) == stop_at { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
        }))
        .unwrap();
        (out, events)
    }

    #[test]
    fn stops_at_max_tokens_and_never_generates_special_or_unused_ids() {
        let c = config(false, 64);
        let mut fake = Fake::new(&BOS, b"abcdef");
        let (out, events) = run(&c, &BOS, &mut fake, "hi", greedy(3), None);
        assert_eq!(out.stop, Stop::MaxTokens(3));
        assert_eq!((out.text.as_str(), out.generated, out.prompt_tokens), ("abc", 3, 3));
        let a = 3 + b'a' as u32;
        // Each token enters the model before its event, except the last one.
        assert_eq!(
            events,
            vec![(a, "a".into(), 1, 4), (a + 1, "b".into(), 2, 5), (a + 2, "c".into(), 3, 5)]
        );
        assert_eq!(fake.seen, vec![0, 3 + b'h' as u32, 3 + b'i' as u32, a, a + 1]);
        // Sampling at a temperature still only draws bytes (and eos).
        let mut fake = Fake::new(&BOS, &[b'x'; 40]);
        let s = Settings { max_tokens: 40, temperature: 5.0, top_k: None, seed: 7 };
        let (out, events) = run(&c, &BOS, &mut fake, "hi", s, None);
        assert!(events.iter().all(|e| BOS.byte(e.0).is_some()), "{events:?}");
        assert!(out.stop == Stop::Eos || out.stop == Stop::MaxTokens(40));
    }

    #[test]
    fn max_tokens_zero_generates_nothing() {
        let c = config(false, 64);
        let mut fake = Fake::new(&BOS, b"abc");
        let (out, events) = run(&c, &BOS, &mut fake, "hi", greedy(0), None);
        assert_eq!((out.stop, out.generated, out.text.as_str()), (Stop::MaxTokens(0), 0, ""));
        assert!(events.is_empty());
    }

    #[test]
    fn stops_at_eos_which_is_not_text() {
        let c = config(false, 64);
        let mut fake = Fake::new(&BOS, b"ab");
        let (out, events) = run(&c, &BOS, &mut fake, "", greedy(10), None);
        assert_eq!((out.stop, out.text.as_str(), out.generated, out.prompt_tokens), (Stop::Eos, "ab", 2, 1));
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn stops_when_the_callback_says_so() {
        let c = config(false, 64);
        let mut fake = Fake::new(&BOS, b"abcdef");
        let (out, events) = run(&c, &BOS, &mut fake, "hi", greedy(10), Some(2));
        assert_eq!((out.stop, out.text.as_str(), out.generated), (Stop::Caller, "ab", 2));
        // The second token is in the model already when its event stops the generation.
        assert_eq!(events[1].3, 5);
        assert_eq!(fake.seen.len(), 5);
    }

    #[test]
    fn a_callback_error_ends_the_generation_with_it() {
        let c = config(false, 64);
        let mut fake = Fake::new(&BOS, b"abcdef");
        let g = Generation::new(&c, &BOS, "hi", &greedy(10)).unwrap();
        let r = pollster::block_on(g.run(&mut fake, || 0.0, |_| Err(LunaError::Input("stdout failed".into()))));
        assert!(matches!(r, Err(LunaError::Input(m)) if m == "stdout failed"));
    }

    #[test]
    fn stops_where_learned_positions_run_out() {
        // Prompt bos + "hi" = 3 tokens; positions 4 and 5 take two generated tokens, and a third is
        // sampled after position 5 but cannot enter the model.
        let c = config(true, 5);
        let mut fake = Fake::new(&BOS, b"abcdef");
        let (out, events) = run(&c, &BOS, &mut fake, "hi", greedy(10), None);
        assert_eq!((out.stop, out.text.as_str()), (Stop::MaxPositions(5), "abc"));
        assert_eq!(events.iter().map(|e| e.3).collect::<Vec<_>>(), vec![4, 5, 5]);
        // When that token is the last one asked for anyway, max_tokens is the reason.
        let mut fake = Fake::new(&BOS, b"abcdef");
        let (out, _) = run(&c, &BOS, &mut fake, "hi", greedy(3), None);
        assert_eq!(out.stop, Stop::MaxTokens(3));
        // Sinusoidal positions have no such end.
        let c = config(false, 5);
        let mut fake = Fake::new(&BOS, b"abcdef");
        let (out, _) = run(&c, &BOS, &mut fake, "hi", greedy(6), None);
        assert_eq!((out.stop, out.text.as_str()), (Stop::MaxTokens(6), "abcdef"));
    }

    #[test]
    fn a_split_character_waits_for_its_last_byte_and_ends_as_the_tail() {
        let c = config(false, 64);
        let mut fake = Fake::new(&NO_BOS, "é".as_bytes());
        let (out, events) = run(&c, &NO_BOS, &mut fake, "x", greedy(2), None);
        assert_eq!(events.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(), vec!["", "é"]);
        assert_eq!((out.text.as_str(), out.tail.as_str()), ("é", ""));
        let mut fake = Fake::new(&NO_BOS, "é".as_bytes());
        let (out, _) = run(&c, &NO_BOS, &mut fake, "x", greedy(1), None);
        assert_eq!((out.text.as_str(), out.tail.as_str()), ("\u{FFFD}", "\u{FFFD}"));
    }

    #[test]
    fn statistics() {
        let c = config(false, 64);
        let mut fake = Fake::new(&BOS, b"abcd");
        let (out, _) = run(&c, &BOS, &mut fake, "hi", greedy(4), None);
        // The clock reads 1 (prefill start), 2 (its end), 3 (decode start), 4..7 (the events), 8 (the end).
        assert_eq!((out.prefill_ms, out.decode_ms, out.state_bytes), (1.0, 5.0, 64));
        assert_eq!(out.tokens_per_second(), 4.0 / 5e-3);
        let stalled = Outcome { decode_ms: 0.0, ..out };
        assert_eq!(stalled.tokens_per_second(), 0.0);
    }

    #[test]
    fn checks_the_prompt_and_the_settings() {
        let err = |c: &Config, tok: &Tokenizer, prompt: &str, s: Settings| Generation::new(c, tok, prompt, &s).unwrap_err().to_string();
        let c = config(true, 4);
        let e = err(&c, &NO_BOS, "", greedy(5));
        assert!(e.contains("empty prompt") && e.contains("bos"), "{e}");
        // With bos, an empty prompt starts from bos.
        assert_eq!(Generation::new(&c, &BOS, "", &greedy(5)).unwrap().prompt(), &[0]);
        let e = err(&c, &BOS, "abcd", greedy(5));
        assert!(e.contains("the prompt is 5 tokens with bos") && e.contains("max_positions = 4"), "{e}");
        let e = err(&c, &NO_BOS, "abcde", greedy(5));
        assert!(e.contains("the prompt is 5 tokens,") && e.contains("learned positions"), "{e}");
        assert_eq!(Generation::new(&c, &BOS, "abc", &greedy(5)).unwrap().prompt().len(), 4);
        assert!(Generation::new(&config(false, 4), &BOS, "abcdefgh", &greedy(5)).is_ok());
        let e = err(&c, &BOS, "a", Settings { temperature: -1.0, ..greedy(5) });
        assert!(e.contains("temperature"), "{e}");
        let e = err(&c, &BOS, "a", Settings { top_k: Some(0), ..greedy(5) });
        assert!(e.contains("top-k 0"), "{e}");
    }
}
