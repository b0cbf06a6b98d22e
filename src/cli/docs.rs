//! Documentation generated from the clap definitions: shell completions and man pages, so
//! neither can drift from the flags.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// Write `rnet`'s completion script for `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "rnet", out);
}

/// `rnet`'s man pages: see [`write_man_pages`].
pub fn rnet_man_pages(dir: &Path) -> Result<Vec<PathBuf>, String> {
    write_man_pages(Cli::command(), dir)
}

/// Write `cmd`'s man pages into `dir` (created if missing): NAME.1, and NAME-SUB.1 for each
/// visible subcommand, nested ones as NAME-SUB-SUB.1. Returns the files written.
pub fn write_man_pages(mut cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("creating man page directory {}: {e}", dir.display()))?;
    // Global flags reach subcommands only once the command is built.
    cmd.build();
    let mut written = Vec::new();
    write_page(&cmd, cmd.get_name().to_string(), dir, &mut written)?;
    Ok(written)
}

fn write_page(
    cmd: &clap::Command,
    name: String,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), String> {
    let path = dir.join(format!("{name}.1"));
    let page = cmd.clone().name(name.clone());
    let mut text = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut text)
        .map_err(|e| format!("rendering {name}.1: {e}"))?;
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_page(sub, format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion_text(shell: Shell) -> String {
        let mut out = Vec::new();
        completions(shell, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn completions_name_the_subcommands_in_every_shell() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = completion_text(shell);
            for sub in ["attach", "detach", "doctor", "peers", "completions", "man"] {
                assert!(text.contains(sub), "{shell} completions lack {sub}");
            }
        }
        assert!(completion_text(Shell::Bash).contains("complete -F _rnet"));
        assert!(completion_text(Shell::Fish).contains("complete -c rnet"));
        assert!(completion_text(Shell::Zsh).starts_with("#compdef rnet"));
    }

    #[test]
    fn man_pages_are_roff_for_rnet_and_each_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = rnet_man_pages(dir.path()).unwrap();
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        for want in [
            "rnet.1",
            "rnet-attach.1",
            "rnet-network-create.1",
            "rnet-man.1",
        ] {
            assert!(names.contains(&want.to_string()), "{want} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        let main = std::fs::read_to_string(dir.path().join("rnet.1")).unwrap();
        assert!(
            main.starts_with(".ie") || main.starts_with(".TH"),
            "{main:.80}"
        );
        assert!(
            main.lines().any(|l| l.starts_with(".TH rnet 1")),
            "{main:.200}"
        );
        assert!(main.contains("attach"));
        // Global flags appear on subcommand pages too.
        let attach = std::fs::read_to_string(dir.path().join("rnet-attach.1")).unwrap();
        assert!(attach.lines().any(|l| l.starts_with(".TH rnet-attach 1")));
        assert!(attach.contains("socket"), "{attach}");
    }

    #[test]
    fn a_man_directory_that_is_a_file_is_refused_by_name() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = rnet_man_pages(file.path()).unwrap_err();
        assert!(err.contains(&file.path().display().to_string()), "{err}");
    }
}
