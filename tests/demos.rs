//! Runs each demo of demos/ on a small input, through the same `run` its
//! `main` calls, and checks what it reports against the engine's own scoring.

mod common;

#[path = "../demos/embed.rs"]
#[allow(dead_code)]
mod embed;
#[path = "../demos/long_document.rs"]
#[allow(dead_code)]
mod long_document;
#[path = "../demos/stream.rs"]
#[allow(dead_code)]
mod stream;

use common::cli::TempDir;
use luna_wgpu::tokenizer::Tokenizer;
use luna_wgpu::{shipped, Batch, Model};

/// Bits per byte of `text` (scored after bos) with the engine's `score`.
fn engine_bpb(text: &[u8]) -> Option<f64> {
    let mut engine = common::engine()?;
    let m = Model::load(&shipped::model_path().unwrap()).unwrap();
    let tok = Tokenizer::from_model(&m).unwrap().unwrap();
    let ids: Vec<i64> = tok.encode_with_bos(text).iter().map(|&t| t as i64).collect();
    let batch = Batch::new(&m.config, &ids, 1, ids.len()).unwrap();
    let gpu = engine.load(&m).unwrap();
    let bits = engine.score_blocking(&gpu, &batch).unwrap();
    Some(bits[..ids.len() - 1].iter().map(|&b| b as f64).sum::<f64>() / text.len() as f64)
}

/// Undoes the report's markup: the text of its `#text` element.
fn report_text(html: &str) -> String {
    let start = html.find("<div id=\"text\">").unwrap() + "<div id=\"text\">".len();
    let body = &html[start..start + html[start..].find("</div>").unwrap()];
    let mut out = String::new();
    let mut in_tag = false;
    for ch in body.chars() {
        match ch {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&")
}

#[test]
fn long_document_scores_a_file_and_writes_its_report() {
    if common::engine().is_none() {
        return;
    }
    let dir = TempDir::new("demos-long");
    // Prose, code with markup characters, and multi-byte UTF-8.
    let sample = std::fs::read(shipped::sample_path().unwrap()).unwrap();
    let mut text = sample[..1200].to_vec();
    text.extend_from_slice("\n<b>if a < b && c > \"d\":</b> café — naïve 🙂\n".as_bytes());
    let file = dir.path("doc.txt");
    std::fs::write(&file, &text).unwrap();
    let out = dir.path("report.html");
    let s = long_document::run(&long_document::Options { file: Some(file), out: out.clone(), model: None, budget: None }).unwrap();

    assert_eq!((s.bytes, s.tokens), (text.len(), text.len() + 1));
    assert!(s.byte_bits.iter().all(|b| b.is_finite() && *b >= 0.0), "every byte is scored after bos");
    let want = engine_bpb(&text).unwrap();
    assert!((s.bits_per_byte - want).abs() <= 1e-4, "demo {} vs score {want}", s.bits_per_byte);
    assert!(s.peak_bytes > s.pack_bytes && s.pack_bytes > 0 && s.tokens_per_second > 0.0);
    assert_eq!((s.most.len(), s.least.len()), (3, 3));
    assert!(s.most[0].bits_per_byte >= s.most[2].bits_per_byte && s.most[2].bits_per_byte >= s.least[2].bits_per_byte);
    assert!(s.least[0].bits_per_byte <= s.least[2].bits_per_byte);

    let html = std::fs::read_to_string(&out).unwrap();
    assert_eq!(report_text(&html), String::from_utf8(text.clone()).unwrap(), "the report shows the document, every character");
    let layers = Model::load(&shipped::model_path().unwrap()).unwrap().config.num_layers;
    let strips = html.matches("\"layer ").count();
    assert_eq!(strips, 6 * layers, "six pack-weight strips per layer");
    assert!(html.contains("[\"surprisal\",\"surprisal in bits per byte"));
    // Several colours: the painting is not uniform.
    let colours = (0..12).filter(|b| html.contains(&format!("<span class=b{b} "))).count();
    assert!(colours >= 4, "{colours} colours");

    // Bits per byte by position: the ranges the document reaches (it is 1.3 KB), each the mean of its bytes, then the whole.
    let mean = |r: std::ops::Range<usize>| s.byte_bits[r.clone()].iter().sum::<f64>() / r.len() as f64;
    let rows: Vec<(&str, std::ops::Range<usize>)> = s.by_position.iter().map(|r| (r.label.as_str(), r.range.clone())).collect();
    let n = text.len();
    assert_eq!(rows, [("first 128 B", 0..128), ("128 B–1 KiB", 128..1024), ("1–8 KiB", 1024..n), ("whole document", 0..n)]);
    for r in &s.by_position {
        let got = r.bits_per_byte.unwrap();
        assert!((got - mean(r.range.clone())).abs() < 1e-9, "{}: {got}", r.label);
    }
    assert!((s.by_position[3].bits_per_byte.unwrap() - s.bits_per_byte).abs() < 1e-9);
    // The chart: its running mean has a point per position sampled, and ends at the document's bits per byte.
    let chart = &html[html.find("<svg class=\"position-chart\"").expect("the report has the chart")..];
    let chart = &chart[..chart.find("</svg>").unwrap()];
    let line = |class: &str| -> Vec<(f64, f64)> {
        let at = &chart[chart.find(&format!("class=\"{class}\"")).unwrap()..];
        let pts = &at[at.find("points=\"").unwrap() + 8..];
        pts[..pts.find('"').unwrap()].split(' ').map(|p| p.split_once(',').map(|(x, y)| (x.parse().unwrap(), y.parse().unwrap())).unwrap()).collect()
    };
    let running = line("running");
    assert_eq!(running.len(), long_document::position_chart::running_mean(&s.byte_bits).len());
    assert!(running.len() > 150 && running.windows(2).all(|w| w[0].0 < w[1].0), "{} points, left to right", running.len());
    assert!(line("windowed").len() >= 10);
    assert!(chart.contains(&format!(">{:.2}</text>", s.bits_per_byte)), "the running mean's last value is labelled");
    assert!(html.contains("<table class=\"ranges\">") && html.contains("<td>1–8 KiB</td>"));
}

#[test]
fn stream_reports_flat_state_while_it_streams() {
    if common::engine().is_none() {
        return;
    }
    let o = stream::Options { prompt: "The os module".into(), tokens: 40, every: 10, temperature: 0.8, seed: 3, model: None };
    let (mut out, mut log) = (Vec::new(), Vec::new());
    let s = stream::run(&o, &mut out, &mut log).unwrap();
    assert_eq!(s.reports.iter().map(|r| r.generated).collect::<Vec<_>>(), [10, 20, 30, 40]);
    let prompt_tokens = 1 + o.prompt.len();
    assert_eq!(s.reports.iter().map(|r| r.position).collect::<Vec<_>>(), [10, 20, 30, 40].map(|g| prompt_tokens + g));
    assert!(s.reports[0].state_bytes > 0 && s.reports.iter().all(|r| r.state_bytes == s.reports[0].state_bytes));
    assert!(s.reports.iter().all(|r| r.tokens_per_second > 0.0));
    let printed = String::from_utf8(out).unwrap();
    assert_eq!(printed, format!("{}{}", o.prompt, s.text));
    assert!(String::from_utf8(log).unwrap().contains("decoder state"));
    // The same seed streams the same text.
    let again = stream::run(&o, &mut Vec::new(), &mut Vec::new()).unwrap();
    assert_eq!(again.text, s.text);
}

#[test]
fn embed_reads_the_outputs_of_a_text() {
    if common::engine().is_none() {
        return;
    }
    let text = "The json module provides";
    let out = embed::run(text, None).unwrap();
    let want = engine_bpb(text.as_bytes()).unwrap();
    assert!((out.bits_per_byte - want).abs() <= 1e-4, "{} vs {want}", out.bits_per_byte);
    assert_eq!(out.next.len(), 5);
    assert!(out.next.windows(2).all(|w| w[0].1 >= w[1].1) && out.next[0].1 > 0.05 && out.next.iter().map(|n| n.1).sum::<f64>() <= 1.0 + 1e-9);
}

/// On a software adapter the demo reads the part of the document its time
/// budget allows, at the speed it measured, cut after a line, and scores that
/// part exactly as `score` does; the report says it is a part.
#[test]
fn long_document_reads_a_part_within_its_budget_on_a_software_adapter() {
    let software = match common::engine() {
        Some(e) => e.ctx.info.device_type == wgpu::DeviceType::Cpu,
        None => return,
    };
    let dir = TempDir::new("demos-budget");
    let sample = std::fs::read(shipped::sample_path().unwrap()).unwrap();
    let text = &sample[..20_000];
    let file = dir.path("doc.txt");
    std::fs::write(&file, text).unwrap();
    let out = dir.path("report.html");
    let s = long_document::run(&long_document::Options { file: Some(file), out: out.clone(), model: None, budget: Some(0.5) }).unwrap();
    assert_eq!(s.document_bytes, text.len());
    if !software {
        assert_eq!(s.bytes, text.len(), "a GPU reads the whole document");
        return;
    }
    assert!(s.bytes < text.len() && s.bytes > 0, "read {} of {} bytes in a budget of 0.5 s", s.bytes, text.len());
    assert_eq!(text[s.bytes - 1], b'\n', "the part ends with a whole line");
    let want = engine_bpb(&text[..s.bytes]).unwrap();
    assert!((s.bits_per_byte - want).abs() <= 1e-4, "demo {} vs score {want}", s.bits_per_byte);
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains(&format!("the first part of {}", text.len())), "the report does not say it read a part");
}
