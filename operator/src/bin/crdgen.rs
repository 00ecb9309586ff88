//! `crdgen`: the CRD YAML of `MipProxy` and `HomeAgent`, generated from `operator/src/crd.rs` (docs/operator.md
//! "One source").
//!
//! ```text
//! crdgen                 both CRDs on stdout, as one multi-document YAML stream
//! crdgen --out DIR       writes DIR/mipproxies.mipproxy.io.yaml and DIR/homeagents.mipproxy.io.yaml
//! crdgen --check DIR     exits 1, naming the first differing line of each file, unless DIR holds exactly that
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use mip_operator::crd::crd_files;

#[derive(Debug, Parser)]
#[command(about = "Writes the MipProxy and HomeAgent CRDs (YAML) generated from operator/src/crd.rs")]
struct Args {
    /// Write one file per CRD into this directory (created if missing).
    #[arg(long, value_name = "DIR", conflicts_with = "check")]
    out: Option<PathBuf>,
    /// Compare the files in this directory with what would be written; exit 1 on any difference.
    #[arg(long, value_name = "DIR")]
    check: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let files = crd_files().map_err(|e| e.to_string())?;
    if let Some(dir) = &args.out {
        write(dir, &files)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(dir) = &args.check {
        return Ok(check(dir, &files));
    }
    let stream: Vec<&str> = files.iter().map(|(_, text)| text.as_str()).collect();
    print!("{}", stream.join("---\n"));
    Ok(ExitCode::SUCCESS)
}

fn write(dir: &Path, files: &[(String, String)]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn check(dir: &Path, files: &[(String, String)]) -> ExitCode {
    let mut stale = false;
    for (name, want) in files {
        let path = dir.join(name);
        let problem = match std::fs::read_to_string(&path) {
            Err(e) => Some(format!("cannot read it ({e})")),
            Ok(have) => first_difference(&have, want),
        };
        if let Some(p) = problem {
            eprintln!("{}: differs from operator/src/crd.rs: {p}", path.display());
            stale = true;
        }
    }
    if stale {
        eprintln!(
            "regenerate with: cargo run -p mip-operator --bin crdgen -- --out {}",
            dir.display()
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The first differing line as a small diff (`-` the file, `+` the generated text), or `None` when equal.
fn first_difference(have: &str, want: &str) -> Option<String> {
    if have == want {
        return None;
    }
    let (mut h, mut w) = (have.lines(), want.lines());
    let mut line = 1;
    loop {
        match (h.next(), w.next()) {
            (Some(a), Some(b)) if a == b => line += 1,
            (None, None) => return Some("line endings or the final newline differ".into()),
            (a, b) => {
                let side = |sign: char, l: Option<&str>| match l {
                    Some(l) => format!("{sign} {l}"),
                    None => format!("{sign} (end of file)"),
                };
                return Some(format!("line {line}:\n{}\n{}", side('-', a), side('+', b)));
            }
        }
    }
}
