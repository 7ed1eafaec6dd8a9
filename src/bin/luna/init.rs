//! `luna init-random` (a model with random weights, optionally with a byte
//! tokenizer) and `luna random-tokens` (a token file of random sequences).

use crate::args::{InitRandomArgs, RandomTokensArgs, TokenizerKind};
use luna_wgpu::tokenizer::Tokenizer;
use luna_wgpu::{tensors, Config, LunaError, Model, Result};

pub fn init_random(a: InitRandomArgs) -> Result<()> {
    let InitRandomArgs { config, out, seed, tokenizer } = a;
    let text = String::from_utf8(tensors::read_limited(&config, 1 << 20)?)
        .map_err(|_| LunaError::Config(format!("{}: not UTF-8 text", config.display())))?;
    let config = Config::from_json(&text)?;
    let mut model = Model::random(&config, seed)?;
    if let Some(TokenizerKind::Bytes) = tokenizer {
        let (tok, specials) = Tokenizer::bytes_for(&config)?;
        if !specials {
            eprintln!(
                "warning: vocab_size {} has no room for bos and eos besides the 256 bytes; the tokenizer has neither",
                config.vocab_size
            );
        }
        tok.store(&mut model)?;
        eprintln!("tokenizer: {}", tok.to_json());
    }
    model.save(&out)?;
    eprintln!("wrote {} ({} tensors)", out.display(), model.named_tensors().len());
    Ok(())
}

pub fn random_tokens(a: RandomTokensArgs) -> Result<()> {
    let RandomTokensArgs { model, lengths, out, seed } = a;
    let model = Model::load(&model)?;
    if lengths.contains(&0) {
        return Err(LunaError::Input("every length must be at least 1".into()));
    }
    let cells = (lengths.len() as u64).saturating_mul(lengths.iter().copied().max().unwrap_or(0) as u64);
    // The i64 ids, and their copy in the file's bytes.
    tensors::check_host_memory(&format!("{} sequences padded to {} tokens", lengths.len(), cells / lengths.len().max(1) as u64), cells.saturating_mul(16))?;
    let (tokens, b, n) = luna_wgpu::init::random_tokens(&model.config, &lengths, seed);
    tensors::write_file(&out, &tensors::serialize_tokens(&tokens, [b, n])?)?;
    eprintln!("wrote {} (tokens [{b}, {n}])", out.display());
    Ok(())
}
