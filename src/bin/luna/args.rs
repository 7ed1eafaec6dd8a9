//! The command line: every subcommand and flag of `luna`, as clap types.

use crate::device::Device;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "luna", version, about = "Luna (Linear Unified Nested Attention) on WebGPU")]
pub struct Cli {
    /// Adapter to use, by name, backend (vulkan, metal, dx12, gl) or type (cpu, discretegpu); default: LUNA_ADAPTER, else the best one
    #[arg(long, global = true)]
    pub adapter: Option<String>,
    /// How the GPU stores GEMM weights: f32, or f16 (float32 arithmetic; needs the adapter's
    /// shader-f16; about 1e-3 relative error, see docs/luna.md, "Tolerances")
    #[arg(long, global = true, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
    /// Run each GEMM's default variant instead of timing the candidates on this adapter at
    /// first use (choices are cached in ~/.cache/luna-wgpu/tuning.json; LUNA_AUTOTUNE=0 does the same)
    #[arg(long, global = true)]
    pub no_autotune: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The GPU flags (`--adapter`, `--precision`, `--no-autotune`) are global, so
/// that they may come before or after the subcommand; the subcommands that
/// never open a GPU do not list them in their help.
const NO_GPU: &[&str] = &["init-random", "random-tokens", "serve", "compare"];

/// The parsed command line.
pub fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let mut command = Cli::command();
    // The same flags, hidden, in those subcommands: clap then does not add the visible global ones there.
    let hidden: Vec<clap::Arg> = command.get_arguments().filter(|a| a.is_global_set()).map(|a| a.clone().hide(true)).collect();
    for name in NO_GPU {
        command = command.mut_subcommand(name, |sub| sub.args(hidden.iter().cloned()));
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PrecisionArg {
    F32,
    F16,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print the adapters, and the chosen one's limits and features
    Info,
    /// Run a model on a token file: an encoder writes `x` [B, n, d] and `p` [B, l', d]; a causal LM writes `logits` [B, n, vocab]
    Forward(ForwardArgs),
    /// Continue a prompt with a causal LM that has a tokenizer, streaming the text to stdout
    Generate(GenerateArgs),
    /// Surprisal of a document under a causal LM, in one parallel pass: bits per byte (or per token)
    Score(ScoreArgs),
    /// Make a model with random weights for a config
    InitRandom(InitRandomArgs),
    /// Benchmark Luna against softmax attention, GEMM throughput, or the decode step
    Bench(BenchArgs),
    /// Make a token file of random sequences for a model, right-padded
    RandomTokens(RandomTokensArgs),
    /// Serve the browser demo and its JavaScript package (web/, built by web/build.sh) on 127.0.0.1,
    /// with the models/ folder beside it under /models/
    Serve(ServeArgs),
    /// Compare two output files of `luna forward` (say the GPU's against `--device cpu`):
    /// the largest difference per tensor, relative to the reference's largest value
    Compare(CompareArgs),
}

#[derive(Args)]
pub struct CompareArgs {
    /// An output file of `luna forward`
    pub output: PathBuf,
    /// The output file to compare it with (the reference, e.g. from `--device cpu`)
    pub reference: PathBuf,
    /// Fail (exit 1) when a tensor's largest difference exceeds this times max(1, its largest |reference| value)
    #[arg(long, default_value_t = 1e-3)]
    pub tolerance: f64,
}

#[derive(Args)]
pub struct ForwardArgs {
    /// The model file (safetensors with `luna.config` metadata: an encoder or a causal LM)
    #[arg(long)]
    pub model: PathBuf,
    /// safetensors file holding `tokens`, int32 or int64 [B, n], right-padded with padding_idx
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the outputs (safetensors: `x` and `p`, or `logits`, with `luna.lengths` metadata)
    #[arg(long)]
    pub output: PathBuf,
    /// Where to run: the GPU, the float64 CPU reference, or the GPU falling back to the reference
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
    /// Run the forward pass this many times and report the median time (the first run builds pipelines)
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// A causal LM file with a tokenizer (`luna.tokenizer` metadata) [default: the shipped
    /// demo model, models/luna-pydoc-bytes.safetensors]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The text to continue, encoded after the tokenizer's bos when it has one. It may be empty
    /// only then (generation starts from bos); without bos an empty prompt is an error
    #[arg(long)]
    pub prompt: String,
    /// Most tokens to generate. Generation also stops at eos (not printed), and with learned
    /// positions when the next token would pass max_positions. Padding, bos and ids that are
    /// neither a byte nor eos are never generated
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token every time
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Sample only among the K most likely tokens
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Seed of the sampler (default: from the clock, printed on stderr)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where to run: the GPU, the float64 CPU reference, or the GPU falling back to the reference
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("document").required(true).args(["text", "tokens"])))]
pub struct ScoreArgs {
    /// A causal LM file [default: the shipped demo model, models/luna-pydoc-bytes.safetensors]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The document: a file whose bytes are scored (needs a model with a tokenizer)
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Or token sequences: a safetensors file holding `tokens`, int32 or int64 [B, n], right-padded
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Write each token's surprisal: `.tsv` (seq, pos, token, byte, bits) or `.safetensors`
    /// (`surprisal` f32 [B, n], entry i = -log2 p(token i | tokens before i), 0 at i = 0 and past the end; and `tokens`)
    #[arg(long)]
    pub surprisal: Option<PathBuf>,
    /// Where to run: the GPU, the float64 CPU reference, or the GPU falling back to the reference
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum TokenizerKind {
    /// Byte-level text: byte b is token b + offset, with pad/bos/eos ids below the bytes when the vocabulary has room
    Bytes,
}

#[derive(Args)]
pub struct InitRandomArgs {
    /// JSON config (the `luna.config` keys: docs/luna.md, "The model file")
    #[arg(long)]
    pub config: PathBuf,
    /// Where to write the model file (safetensors)
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the random weights (the same seed gives the same model on every platform)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Store a tokenizer in the model file (`luna.tokenizer` metadata)
    #[arg(long, value_enum)]
    pub tokenizer: Option<TokenizerKind>,
}

#[derive(Args)]
pub struct RandomTokensArgs {
    /// The model whose vocabulary and padding id the tokens follow
    #[arg(long)]
    pub model: PathBuf,
    /// Lengths of the sequences, comma-separated (e.g. 3000,1200)
    #[arg(long, value_delimiter = ',', required = true)]
    pub lengths: Vec<usize>,
    /// Where to write the token file (safetensors, `tokens` int64 [B, n], right-padded)
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the random tokens
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Port on 127.0.0.1 (0 picks a free one; the address is printed on stdout)
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The folder to serve (default: ./web, else the web/ folder of this source tree)
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Seconds a client has to send its whole request head, and the longest a response
    /// waits for the client to read more of it, before the connection is dropped (1 to 30)
    #[arg(long, value_name = "SECONDS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=30))]
    pub timeout: u64,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum BenchOp {
    /// One encoder layer: Luna for each --projection-length against the flash and naive softmax layers
    Layer,
    /// A whole encoder of --layers layers, the same comparison
    Encoder,
    /// GEMM GFLOP/s on square and skinny shapes
    Matmul,
    /// The causal decode step's time against position
    Decode,
    /// The causal LM of the demo model's shape, in the authors' form and with the shipped
    /// model's local-context extension: a forward pass at each n as a share of the 1024^3
    /// GEMM's GFLOP/s (timed in turn), and the decode step at position 1000
    Lm,
    /// The longest single sequence each method holds on this adapter (the engine's own
    /// check against one binding and the device's memory), and one layer at --min-n,
    /// doubling, up to it: peak memory against n (each point timed once; --max-seconds
    /// skips what would take too long). Not part of `all`
    Longest,
    /// All of the above but `longest`
    All,
}

#[derive(Args)]
pub struct BenchArgs {
    /// What to benchmark
    #[arg(long, value_enum, default_value = "layer")]
    pub op: BenchOp,
    /// Smallest sequence length (doubling up to --max-n)
    #[arg(long, default_value_t = 1024)]
    pub min_n: usize,
    /// Largest sequence length (default: 8192 on a software adapter, 65536 otherwise); for
    /// `--op decode`, the largest position (default 10^4 on a software adapter, 10^5 otherwise)
    #[arg(long)]
    pub max_n: Option<usize>,
    /// Projection lengths l of Luna, comma-separated (`--op decode` uses the first)
    #[arg(long, visible_alias = "l", value_delimiter = ',', default_value = "16,128,256")]
    pub projection_length: Vec<usize>,
    /// Model width
    #[arg(long, default_value_t = 256)]
    pub d: usize,
    /// Attention heads (d must be divisible by it)
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Sequences per batch
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Layers of the whole-encoder op
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Timed runs per point, after one warm-up
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Skip a point predicted to take longer than this many seconds in all
    #[arg(long, default_value_t = 120.0)]
    pub max_seconds: f64,
    /// Leave out the softmax baselines
    #[arg(long)]
    pub no_softmax: bool,
    /// Where the CSV, JSON and SVG files go
    #[arg(long, default_value = "bench-out")]
    pub out_dir: PathBuf,
    /// `--op matmul`: also time this WGSL GEMM (C[M,N] = A[M,K]·B[K,N]; A, B, C at
    /// bindings 0, 1, 2; entry `main`) on --peer-shape, interleaved with ours
    #[arg(long)]
    pub peer_wgsl: Option<PathBuf>,
    /// Workgroups to dispatch for --peer-wgsl, as x,y,z
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "16,32,1")]
    pub peer_grid: Vec<u32>,
    /// The m,n,k the peer kernel computes
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "1024,1024,1024")]
    pub peer_shape: Vec<usize>,
}
