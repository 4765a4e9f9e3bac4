//! What both command lines share beyond their flags: every error one line that names what is wrong
//! (the environment variable, when a value came from one), negative numbers taken as values so the
//! range check can name the range, and booleans that take `1`/`0`, `yes`/`no` as well as
//! `true`/`false`.

use std::ffi::OsString;

use clap::builder::{BoolishValueParser, ValueParser};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use std::error::Error as _;

/// The flags the user gave, on the command line or in the environment: `(--flag, VARIABLE)`.
#[derive(Debug, Default, Clone)]
pub struct Given(Vec<(String, Option<String>)>);

impl Given {
    /// Which of `flags` were given.
    pub fn which<'a>(&self, flags: &[&'a str]) -> Vec<&'a str> {
        flags.iter().copied().filter(|f| self.0.iter().any(|(g, _)| g == f)).collect()
    }

    /// `message` with the variable named after it, for each flag it names that a variable set.
    pub fn name_variables(&self, message: &str) -> String {
        let named: Vec<String> = self
            .0
            .iter()
            .filter_map(|(flag, var)| var.as_ref().filter(|_| names_flag(message, flag)).map(|var| format!("{flag} is set by {var}")))
            .collect();
        if named.is_empty() {
            message.to_string()
        } else {
            format!("{message} ({})", named.join(", "))
        }
    }
}

/// Whether `message` names `--flag` itself (not `--flag-more`).
fn names_flag(message: &str, flag: &str) -> bool {
    message.match_indices(flag).any(|(i, _)| !message[i + flag.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-'))
}

/// Parses the process's arguments into `T`. `--help` and `--version` print and exit 0 (the help for
/// a missing subcommand, exit 2); any other error is one `ERROR` line and exit 2 (call
/// `telemetry::init_logs` first).
pub fn parse<T: clap::Parser>() -> (T, Given) {
    parse_args(std::env::args_os())
}

/// [`parse`] of these arguments (the first is the program's name).
pub fn parse_args<T: clap::Parser>(args: impl IntoIterator<Item = impl Into<OsString>>) -> (T, Given) {
    parse_from::<T>(args).unwrap_or_else(|e| match e {
        Refused::Display(e) => {
            let _ = e.print();
            crate::telemetry::exit(e.exit_code() as u8)
        }
        Refused::Invalid(line) => {
            tracing::error!("invalid configuration: {line}");
            crate::telemetry::exit(2)
        }
    })
}

/// Why [`parse_from`] gave no configuration.
#[derive(Debug)]
pub enum Refused {
    /// `--help`, `--version`, or the help when a subcommand is missing: clap prints it.
    Display(clap::Error),
    /// A bad command line, in one line.
    Invalid(String),
}

pub fn parse_from<T: clap::Parser>(args: impl IntoIterator<Item = impl Into<OsString>>) -> Result<(T, Given), Refused> {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = adjust(T::command());
    let parsed = cmd.try_get_matches_from_mut(&args).and_then(|mut matches| {
        // Before from_arg_matches_mut, which takes the values out.
        let mut given = Given::default();
        collect_given(&cmd, &matches, &mut given);
        T::from_arg_matches_mut(&mut matches).map(|t| (t, given))
    });
    parsed.map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Refused::Display(e),
        _ => Refused::Invalid(one_line(&cmd, &e, &args)),
    })
}

/// Every value-taking flag, in every subcommand: negative numbers are values, booleans are
/// boolish; and every subcommand's help ends as the command's does (logs, exit codes).
fn adjust(cmd: Command) -> Command {
    let after_help = cmd.get_after_help().cloned();
    cmd.mut_args(|a| {
        let a = if a.get_action().takes_values() { a.allow_negative_numbers(true) } else { a };
        let t = a.get_value_parser().type_id();
        if t == ValueParser::bool().type_id() {
            a.value_parser(BoolishValueParser::new())
        } else if t == ValueParser::from(clap::value_parser!(u32)).type_id() {
            a.value_parser(count::<u32>)
        } else if t == ValueParser::from(clap::value_parser!(u64)).type_id() {
            a.value_parser(count::<u64>)
        } else if t == ValueParser::from(clap::value_parser!(usize)).type_id() {
            a.value_parser(count::<usize>)
        } else {
            a
        }
    })
    .mut_subcommands(|sub| {
        let sub = adjust(sub);
        match (&after_help, sub.get_after_help()) {
            (Some(text), None) => sub.after_help(text.clone()),
            _ => sub,
        }
    })
}

/// An unsigned flag's value. clap's own parser would name the type's maximum ("-1 is not in
/// 0..=4294967295"), which is not the flag's: the flag's range is checked after parsing.
fn count<T: TryFrom<u128>>(text: &str) -> Result<T, String> {
    match text.trim().parse::<i128>() {
        Ok(n) if n < 0 => Err("it must not be negative".into()),
        Ok(n) => T::try_from(n as u128).map_err(|_| "it is far too large".into()),
        Err(_) => Err("a whole number is expected".into()),
    }
}

fn collect_given(cmd: &Command, matches: &ArgMatches, out: &mut Given) {
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let flag = arg.get_long().map(|l| format!("--{l}")).or_else(|| arg.get_short().map(|s| format!("-{s}")));
        let source = matches.try_contains_id(id).ok().filter(|c| *c).and_then(|_| matches.value_source(id));
        match (flag, source) {
            (Some(flag), Some(ValueSource::CommandLine)) => out.0.push((flag, None)),
            (Some(flag), Some(ValueSource::EnvVariable)) => out.0.push((flag, arg.get_env().map(|e| e.to_string_lossy().into_owned()))),
            _ => {}
        }
    }
    if let Some((name, sub)) = matches.subcommand() {
        if let Some(sub_cmd) = cmd.find_subcommand(name) {
            collect_given(sub_cmd, sub, out);
        }
    }
}

/// clap's error (a message, tips, the usage, over several lines) as one line; a value that came
/// from an environment variable is named by its variable.
fn one_line(cmd: &Command, e: &clap::Error, args: &[OsString]) -> String {
    let value = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    if let (ErrorKind::ValueValidation | ErrorKind::InvalidValue, Some(arg), Some(value)) =
        (e.kind(), value(ContextKind::InvalidArg), value(ContextKind::InvalidValue))
    {
        let flag = arg.split([' ', '=']).next().unwrap_or(&arg).to_string();
        let reason = e.source().map(ToString::to_string).or_else(|| e.get(ContextKind::ValidValue).map(|v| format!("expected one of {v}")));
        let reason = reason.map_or_else(String::new, |r| format!(": {r}"));
        let on_command_line = args.iter().any(|a| a.to_string_lossy().split('=').next() == Some(flag.as_str()));
        let env = env_of(cmd, &flag).filter(|v| !on_command_line && std::env::var(v).is_ok_and(|set| set == value));
        return match env {
            Some(var) => format!("{var}={value:?} (for {flag}) is not a valid value{reason}"),
            None => format!("{flag} {value:?} is not a valid value{reason}"),
        };
    }
    let text = e.render().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let parts: Vec<&str> = text
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with("Usage:") && !p.starts_with("For more information"))
        .collect();
    let joined = parts.join("; ").split_whitespace().collect::<Vec<_>>().join(" ");
    format!("{joined} (see --help)")
}

/// The environment variable of `--flag`, in the command or any subcommand.
fn env_of(cmd: &Command, flag: &str) -> Option<String> {
    cmd.get_arguments()
        .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == flag) || a.get_short().is_some_and(|s| format!("-{s}") == flag))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .or_else(|| cmd.get_subcommands().find_map(|s| env_of(s, flag)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[arg(long, env = "CLI_TEST_RATE", default_value_t = 1.0)]
        rate: f64,
        #[arg(long, default_value_t = 0)]
        days: u32,
        #[arg(long, env = "CLI_TEST_ON")]
        on: bool,
    }

    fn refused(args: &[&str]) -> String {
        match parse_from::<Flags>(std::iter::once("t").chain(args.iter().copied())) {
            Err(Refused::Invalid(line)) => line,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    /// One test, as it sets the variables the others would read.
    #[test]
    fn errors_are_one_line_negatives_are_values_and_booleans_take_1_and_0() {
        assert_eq!(refused(&["--rate", "abc"]), "--rate \"abc\" is not a valid value: invalid float literal");
        assert_eq!(refused(&["--days", "-1"]), "--days \"-1\" is not a valid value: it must not be negative");
        assert_eq!(refused(&["--days", "1e99"]), "--days \"1e99\" is not a valid value: a whole number is expected");
        let unknown = refused(&["--rte", "2"]);
        assert!(unknown.starts_with("unexpected argument '--rte' found; tip: a similar argument exists: '--rate'"), "{unknown}");
        assert!(!unknown.contains('\n'), "{unknown}");
        let (f, _) = parse_from::<Flags>(["t", "--rate", "-3"]).unwrap();
        assert_eq!((f.rate, f.days, f.on), (-3.0, 0, false));
        std::env::set_var("CLI_TEST_ON", "1");
        std::env::set_var("CLI_TEST_RATE", "fast");
        assert_eq!(refused(&[]), "CLI_TEST_RATE=\"fast\" (for --rate) is not a valid value: invalid float literal");
        let (f, env) = parse_from::<Flags>(["t", "--rate", "2"]).unwrap();
        assert_eq!((f.rate, f.on), (2.0, true));
        assert_eq!(env.0, [("--rate".to_string(), None), ("--on".to_string(), Some("CLI_TEST_ON".to_string()))]);
        assert_eq!(env.which(&["--on", "--days"]), ["--on"]);
        std::env::set_var("CLI_TEST_ON", "maybe");
        let line = refused(&["--rate", "2"]);
        assert!(line.starts_with("CLI_TEST_ON=\"maybe\" (for --on) is not a valid value"), "{line}");
        std::env::remove_var("CLI_TEST_ON");
        std::env::remove_var("CLI_TEST_RATE");
    }

    #[test]
    fn variables_are_named() {
        let env = Given(vec![("--conf".into(), Some("DETECTOR_CONF".into())), ("--iou".into(), None)]);
        assert_eq!(
            env.name_variables("--conf must be within 0 and 1, got 7"),
            "--conf must be within 0 and 1, got 7 (--conf is set by DETECTOR_CONF)"
        );
        assert_eq!(env.name_variables("--conf-x is bad"), "--conf-x is bad");
        assert_eq!(env.name_variables("--iou must be"), "--iou must be");
    }
}
