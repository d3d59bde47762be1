//! The `--help` texts users read: no developer notes, and every flag of train, eval, predict and export
//! described (a flag listed without a sentence is a flag nobody can use safely).
use cephalo::cli::Cli;
use clap::CommandFactory;

#[test]
fn help_texts_describe_every_flag_and_hold_no_developer_notes() {
    let mut cli = Cli::command();
    let mut undescribed = Vec::new();
    for name in ["train", "eval", "predict", "export"] {
        let sub = cli
            .find_subcommand_mut(name)
            .unwrap_or_else(|| panic!("no `{name}` subcommand"));
        let help = sub.render_long_help().to_string();
        for note in ["An Option, so that", "Option<", "TODO", "FIXME"] {
            assert!(
                !help.contains(note),
                "`cephalo {name} --help` shows a developer note ({note}):\n{help}"
            );
        }
        for arg in sub.get_arguments() {
            if arg.is_hide_set() || arg.get_id() == "help" {
                continue;
            }
            let described = arg
                .get_help()
                .or(arg.get_long_help())
                .is_some_and(|h| !h.to_string().trim().is_empty());
            if !described {
                undescribed.push(format!("cephalo {name} --{}", arg.get_id()));
            }
        }
    }
    assert!(
        undescribed.is_empty(),
        "flags without a description: {}",
        undescribed.join(", ")
    );
}
