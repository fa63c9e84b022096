//! `kiln fmt`: rewrites `*.pkr.hcl` and `*.pkrvars.hcl` files in the canonical format.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::cli::FmtArgs;
use crate::exit::{CliError, Status};
use crate::hclfmt;

/// Whether `kiln fmt` formats a file found in a directory.
fn is_template(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".pkr.hcl") || name.ends_with(".pkrvars.hcl")
}

/// The files to format: files named on the command line, template files in named directories.
fn collect(
    path: &Path,
    recursive: bool,
    top: bool,
    out: &mut Vec<PathBuf>,
) -> Result<(), CliError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| CliError::user(format!("cannot read `{}`", path.display()), e))?;
    if !meta.is_dir() {
        if top || is_template(path) {
            out.push(path.to_path_buf());
        }
        return Ok(());
    }
    if !top && !recursive {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .and_then(|rd| rd.map(|e| e.map(|e| e.path())).collect())
        .map_err(|e| CliError::user(format!("cannot list `{}`", path.display()), e))?;
    entries.sort();
    for entry in entries {
        let is_dir = entry.is_dir();
        if is_dir && recursive {
            collect(&entry, recursive, false, out)?;
        } else if !is_dir && is_template(&entry) {
            out.push(entry);
        }
    }
    Ok(())
}

fn diff(path: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .header(&format!("old/{path}"), &format!("new/{path}"))
        .to_string()
}

pub fn run(args: FmtArgs) -> Result<Status, CliError> {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };
    let mut stdout = std::io::stdout().lock();
    let mut status = Status::Success;
    for path in paths {
        if path.as_os_str() == "-" {
            let mut src = String::new();
            std::io::stdin()
                .read_to_string(&mut src)
                .map_err(|e| CliError::user("cannot read stdin", e))?;
            let formatted =
                hclfmt::format(&src).map_err(|e| CliError::user("cannot format stdin", e))?;
            if args.check && formatted != src {
                status = Status::Unformatted;
            }
            let out = if args.diff {
                diff("<stdin>", &src, &formatted)
            } else {
                formatted
            };
            let _ = stdout.write_all(out.as_bytes());
            continue;
        }
        let mut files = Vec::new();
        collect(&path, args.recursive, true, &mut files)?;
        for file in files {
            let shown = file.display().to_string();
            let src = std::fs::read_to_string(&file)
                .map_err(|e| CliError::user(format!("cannot read `{shown}`"), e))?;
            let formatted = match hclfmt::format(&src) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("error: cannot format `{shown}`\n  caused by: {e}");
                    if status == Status::Success {
                        status = Status::Usage;
                    }
                    continue;
                }
            };
            if formatted == src {
                continue;
            }
            let _ = writeln!(stdout, "{shown}");
            if args.diff {
                let _ = stdout.write_all(diff(&shown, &src, &formatted).as_bytes());
            }
            if args.check {
                status = Status::Unformatted;
            } else {
                std::fs::write(&file, formatted)
                    .map_err(|e| CliError::user(format!("cannot write `{shown}`"), e))?;
            }
        }
    }
    Ok(status)
}
