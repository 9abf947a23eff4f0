//! The `zae-limiter` CLI's lines against the Python zae-limiter 0.17.0 CLI's, one test per
//! command group: every command runs with our CLI on one table and with the reference CLI on
//! a twin table in the same state (same namespaces, entities and limits, made by the same
//! commands), and must print the same stdout and stderr and exit the same. Only what is
//! different by nature is masked: the table name, the namespace ids, timestamps and the
//! measured latency. Usage errors (exit 2) are clap's wording, not click's: README, "The ops
//! CLI", lists that and the other deliberate differences, which are left out here.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use zael_tests::cli::{CliOutput, run_cli, run_reference_cli};
use zael_tests::moto::Moto;
use zael_tests::unique;

fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

fn endpoint() -> String {
    format!("--endpoint-url={}", moto().endpoint())
}

/// One table for our CLI and one for the reference's, both made by `deploy --table-only`.
struct Twins {
    ours: String,
    theirs: String,
    /// Namespace ids by table, then by namespace name.
    ids: BTreeMap<String, BTreeMap<String, String>>,
}

/// A command's outcome with the table name, namespace ids, timestamps and latency masked.
#[derive(Debug, PartialEq, Eq)]
struct Lines {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Twins {
    async fn new(prefix: &str) -> Twins {
        let (ours, theirs) = (unique(prefix), unique(prefix));
        let mut ids = BTreeMap::new();
        for table in [&ours, &theirs] {
            let out = run_cli(&["deploy", "--table-only", "-n", table, &endpoint()], "").await;
            assert_eq!(out.code, 0, "{out:?}");
            let out = run_cli(&["namespace", "show", "default", "-n", table, &endpoint()], "").await;
            let id = out.stdout.lines().find_map(|l| l.strip_prefix("Namespace ID: ")).expect("the default's id");
            ids.insert(table.clone(), BTreeMap::from([("default".to_owned(), id.to_owned())]));
        }
        Twins { ours, theirs, ids }
    }

    /// `args` on our table with our CLI and on the twin with the reference CLI, `stdin` to
    /// both (`-n TABLE` and the endpoint are added); panics unless the masked lines are equal.
    async fn both(&mut self, args: &[&str], stdin: &str) -> Lines {
        let ours = self.run(true, args, stdin).await;
        let theirs = self.run(false, args, stdin).await;
        assert_eq!(ours, theirs, "zae-limiter {args:?}: ours (left) and the reference (right) differ");
        ours
    }

    /// Like [`Twins::both`] in namespace `ns`.
    async fn both_in(&mut self, ns: &str, args: &[&str], stdin: &str) -> Lines {
        self.both(&[args, &["-N", ns]].concat(), stdin).await
    }

    async fn run(&mut self, ours: bool, args: &[&str], stdin: &str) -> Lines {
        let table = if ours { self.ours.clone() } else { self.theirs.clone() };
        let endpoint = endpoint();
        let mut all = args.to_vec();
        all.extend(["-n", &table, &endpoint]);
        let out = if ours { run_cli(&all, stdin).await } else { run_reference_cli(&all, stdin).await };
        self.learn_ids(&table, args, &out);
        let ids = self.ids.get(&table).cloned().unwrap_or_default();
        let mask = |text: &str| mask(text, &table, &ids);
        Lines { code: out.code, stdout: mask(&out.stdout), stderr: mask(&out.stderr) }
    }

    /// Namespace ids from `namespace register`'s lines (`Registered namespace 'NAME': ID`, or
    /// `  NAME: ID` under `Registered N namespace(s):`).
    fn learn_ids(&mut self, table: &str, args: &[&str], out: &CliOutput) {
        if args.get(..2) != Some(&["namespace", "register"][..]) {
            return;
        }
        for line in out.stdout.lines() {
            let pair = match line.strip_prefix("Registered namespace '") {
                Some(rest) => rest.split_once("': "),
                None => line.strip_prefix("  ").and_then(|rest| rest.split_once(": ")),
            };
            if let Some((name, id)) = pair {
                self.ids.entry(table.to_owned()).or_default().insert(name.to_owned(), id.to_owned());
            }
        }
    }

    /// The id of namespace `name` on our table and on the twin.
    fn id(&self, name: &str) -> (String, String) {
        (self.ids[&self.ours][name].clone(), self.ids[&self.theirs][name].clone())
    }

    /// A set-up command on both tables with our CLI (must succeed).
    async fn setup(&self, args: &[&str]) {
        for table in [&self.ours, &self.theirs] {
            let endpoint = endpoint();
            let mut all = args.to_vec();
            all.extend(["-n", table, &endpoint]);
            let out = run_cli(&all, "").await;
            assert_eq!(out.code, 0, "{all:?}: {out:?}");
        }
    }
}

/// `text` with the table name as `<table>`, each namespace id as `<id:NAME>`, ISO timestamps
/// as `<time>`, ULIDs (audit event ids) as `<ulid>` and `NNNms` latencies as `<ms>`.
fn mask(text: &str, table: &str, ids: &BTreeMap<String, String>) -> String {
    let mut out = text.replace(table, "<table>");
    for (name, id) in ids {
        out = out.replace(id, &format!("<id:{name}>"));
    }
    let time = regex_lite::Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?").unwrap();
    let out = time.replace_all(&out, "<time>").into_owned();
    let ulid = regex_lite::Regex::new(r"\b[0-9A-HJKMNP-TV-Z]{26}\b").unwrap();
    let out = ulid.replace_all(&out, "<ulid>").into_owned();
    let latency = regex_lite::Regex::new(r"Latency: +\d+ms").unwrap();
    latency.replace_all(&out, "Latency: <ms>").into_owned()
}

fn lines(code: i32, stdout: &str, stderr: &str) -> Lines {
    Lines { code, stdout: stdout.into(), stderr: stderr.into() }
}

#[tokio::test]
async fn namespace_lines_are_the_reference_cli_lines() {
    let mut t = Twins::new("zln").await;
    let out = t.both(&["namespace", "register", "alpha"], "").await;
    assert_eq!(out, lines(0, "Registered namespace 'alpha': <id:alpha>\n", ""));
    t.both(&["namespace", "register", "alpha"], "").await;
    let out = t.both(&["namespace", "register", "beta", "gamma"], "").await;
    assert_eq!(out.stdout, "Registered 2 namespace(s):\n  beta: <id:beta>\n  gamma: <id:gamma>\n");
    let out = t.both(&["namespace", "list"], "").await;
    assert!(out.stdout.ends_with("\nTotal: 4 namespace(s)\n"), "{out:?}");
    t.both(&["namespace", "show", "alpha"], "").await;
    let out = t.both(&["namespace", "show", "nope"], "").await;
    assert_eq!(out.code, 1);
    // End of input at a prompt aborts (click's `Aborted!`), as does "n".
    for stdin in ["", "n\n"] {
        let out = t.both(&["namespace", "delete", "beta"], stdin).await;
        assert_eq!(
            out,
            lines(1, "Delete namespace 'beta'? Data will be orphaned but recoverable. [y/N]: ", "Aborted!\n")
        );
    }
    t.both(&["namespace", "delete", "beta", "-y"], "").await;
    t.both(&["namespace", "delete", "beta", "-y"], "").await;
    t.both(&["namespace", "orphans"], "").await;
    let (ours, theirs) = t.id("beta");
    let recovered = (
        t.run(true, &["namespace", "recover", &ours], "").await,
        t.run(false, &["namespace", "recover", &theirs], "").await,
    );
    assert_eq!(recovered.0, recovered.1);
    assert_eq!(recovered.0.stdout, "Recovered namespace 'beta' (ID: <id:beta>).\n");
    t.both(&["namespace", "delete", "beta", "-y"], "").await;
    let purged = (
        t.run(true, &["namespace", "purge", &ours, "-y"], "").await,
        t.run(false, &["namespace", "purge", &theirs, "-y"], "").await,
    );
    assert_eq!(purged.0, purged.1);
    assert_eq!(purged.0.stdout, "Purged namespace '<id:beta>'. All data permanently deleted.\n");
    t.both(&["namespace", "orphans"], "").await;
    t.both(&["namespace", "list"], "").await;
}

#[tokio::test]
async fn entity_lines_are_the_reference_cli_lines() {
    let mut t = Twins::new("zle").await;
    t.setup(&["namespace", "register", "tenant"]).await;
    let ns = "tenant";
    let out = t.both_in(ns, &["entity", "create", "team-a"], "").await;
    assert_eq!(out, lines(0, "Created entity 'team-a'\n  Cascade: False\n", ""));
    assert_eq!(t.both_in(ns, &["entity", "create", "team-a"], "").await.code, 1);
    t.both_in(ns, &["entity", "create", "key-1", "--parent", "team-a", "--cascade", "--display-name", "Key 1"], "")
        .await;
    t.both_in(ns, &["entity", "show", "key-1"], "").await;
    assert_eq!(t.both_in(ns, &["entity", "show", "nope"], "").await.code, 1);
    t.both_in(ns, &["entity", "set-limits", "key-1", "-l", "rpm:10", "-l", "tpm:1000/min:2000", "--soft", "tpm"], "")
        .await;
    t.both_in(ns, &["entity", "set-limits", "key-1", "-r", "gpt-4", "-l", "rpm:5/hour"], "").await;
    for bad in ["rpm:abc", "rpm:10/fortnight", "rpm", "rpm:10:-1"] {
        let out = t.both_in(ns, &["entity", "set-limits", "key-1", "-l", bad], "").await;
        assert_eq!(out.code, 1, "{bad}: {out:?}");
    }
    t.both_in(ns, &["entity", "get-limits", "key-1"], "").await;
    t.both_in(ns, &["entity", "get-limits", "key-1", "-r", "gpt-4"], "").await;
    t.both_in(ns, &["entity", "get-limits", "nope"], "").await;
    t.both_in(ns, &["entity", "list", "--with-custom-limits", "gpt-4"], "").await;
    t.both_in(ns, &["entity", "list-resources"], "").await;
    for command in ["disable", "enable", "bypass", "clear-disabled", "clear-cascade"] {
        t.both_in(ns, &["entity", command, "key-1"], "").await;
    }
    t.both_in(ns, &["entity", "set-cascade", "key-1", "off"], "").await;
    t.both_in(ns, &["entity", "set-parent", "key-1", "--parent", "team-a"], "").await;
    t.both_in(ns, &["entity", "show", "key-1"], "").await;
    // Deleting limits: end of input aborts, "n" cancels, then -y deletes.
    let delete = ["entity", "delete-limits", "key-1", "-r", "gpt-4"];
    let prompt = "Delete limits for entity 'key-1' on resource 'gpt-4'? [y/N]: ";
    assert_eq!(t.both_in(ns, &delete, "").await, lines(1, prompt, "Aborted!\n"));
    assert_eq!(t.both_in(ns, &delete, "n\n").await, lines(0, &format!("{prompt}Cancelled\n"), ""));
    let out = t.both_in(ns, &[&delete[..], &["-y"]].concat(), "").await;
    assert_eq!(out, lines(0, "Deleted limits for entity 'key-1' on resource 'gpt-4'\n", ""));
    t.both_in(ns, &["entity", "get-limits", "key-1", "-r", "gpt-4"], "").await;
    t.both_in(ns, &["entity", "get-limits", "key-1", "-r", "gpt-4"], "").await;
    t.both_in("nope", &["entity", "get-limits", "key-1"], "").await;
}

#[tokio::test]
async fn resource_and_system_lines_are_the_reference_cli_lines() {
    let mut t = Twins::new("zlr").await;
    t.setup(&["namespace", "register", "tenant"]).await;
    let ns = "tenant";
    t.both_in(ns, &["resource", "set-defaults", "gpt-4", "-l", "rpm:100", "-l", "tpm:10000/min:20000"], "").await;
    t.both_in(ns, &["resource", "get-defaults", "gpt-4"], "").await;
    t.both_in(ns, &["resource", "get-defaults", "nope"], "").await;
    t.both_in(ns, &["resource", "list"], "").await;
    for command in ["disable", "enable", "bypass", "clear-disabled", "clear-cascade"] {
        t.both_in(ns, &["resource", command, "gpt-4"], "").await;
    }
    t.both_in(ns, &["resource", "set-cascade", "gpt-4", "on"], "").await;
    let delete = ["resource", "delete-defaults", "gpt-4"];
    assert_eq!(t.both_in(ns, &delete, "").await.code, 1, "end of input aborts");
    assert_eq!(t.both_in(ns, &delete, "n\n").await.code, 0, "no cancels");
    t.both_in(ns, &[&delete[..], &["-y"]].concat(), "").await;
    t.both_in(ns, &["resource", "get-defaults", "gpt-4"], "").await;
    t.both_in(ns, &["resource", "delete-defaults", "nope", "-y"], "").await;

    t.both_in(ns, &["system", "set-defaults", "-l", "rpm:1000", "--on-unavailable", "allow"], "").await;
    t.both_in(ns, &["system", "get-defaults"], "").await;
    assert_eq!(t.both_in(ns, &["system", "delete-defaults"], "").await.code, 1, "end of input aborts");
    t.both_in(ns, &["system", "delete-defaults", "-y"], "").await;
    t.both_in(ns, &["system", "get-defaults"], "").await;
    t.both_in(ns, &["system", "set-defaults", "-l", "rpm:x"], "").await;
}

#[tokio::test]
async fn stack_lines_are_the_reference_cli_lines() {
    let mut t = Twins::new("zls").await;
    t.both(&["version"], "").await;
    let out = t.both(&["check"], "").await;
    assert_eq!(
        out,
        lines(
            0,
            "\nCompatibility Check\n====================\n\nClient:      0.17.0\nSchema:      0.10.0\nLambda:      0.17.0\n\n\
             Result: COMPATIBLE\n\nClient and infrastructure are fully compatible.\n",
            ""
        )
    );
    // A table that does not exist: NOT INITIALIZED (check), Not initialized (version).
    let missing = |args: &[&str]| {
        let endpoint = endpoint();
        let mut all = args.to_vec();
        all.extend(["-n", "never-deployed", &endpoint]);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    for args in [missing(&["check"]), missing(&["version"]), missing(&["status"])] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ours, theirs) = (run_cli(&args, "").await, run_reference_cli(&args, "").await);
        let none = BTreeMap::new();
        let masked = |o: &CliOutput| {
            lines(o.code, &mask(&o.stdout, "never-deployed", &none), &mask(&o.stderr, "never-deployed", &none))
        };
        assert_eq!(masked(&ours), masked(&theirs), "{args:?}");
    }
    // `status`: the same but for `Size:` (the reference always shows N/A; README, D10).
    let ours = t.run(true, &["status"], "").await;
    let theirs = t.run(false, &["status"], "").await;
    let without_size =
        |l: &Lines| l.stdout.lines().filter(|l| !l.starts_with("  Size:")).collect::<Vec<_>>().join("\n");
    assert_eq!((ours.code, without_size(&ours), &ours.stderr), (theirs.code, without_size(&theirs), &theirs.stderr));
    assert!(ours.stdout.contains("\n  Size:          ~"), "{ours:?}");

    // cfn-template -o: the line (the template itself is JSON here, YAML there: README).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("template.out");
    let path = path.to_str().unwrap();
    let (ours, theirs) =
        (run_cli(&["cfn-template", "-o", path], "").await, run_reference_cli(&["cfn-template", "-o", path], "").await);
    assert_eq!((ours.code, &ours.stdout, &ours.stderr), (theirs.code, &theirs.stdout, &theirs.stderr));
    assert_eq!(ours.stdout, format!("✓ Template exported to: {path}\n"));
    // lambda-export onto an existing file without --force.
    let (ours, theirs) = (
        run_cli(&["lambda-export", "-o", path], "").await,
        run_reference_cli(&["lambda-export", "-o", path], "").await,
    );
    assert_eq!((ours.code, &ours.stdout, &ours.stderr), (theirs.code, &theirs.stdout, &theirs.stderr));
    assert_eq!(ours.stderr, format!("File already exists: {path}\nUse --force to overwrite.\n"));
}

#[tokio::test]
async fn usage_and_audit_lines_are_the_reference_cli_lines() {
    let mut t = Twins::new("zlu").await;
    t.setup(&["namespace", "register", "tenant"]).await;
    let ns = "tenant";
    t.setup(&["entity", "create", "key-1", "-N", ns]).await;
    t.setup(&["entity", "set-limits", "key-1", "-l", "rpm:10", "-N", ns]).await;
    t.both_in(ns, &["usage", "list", "-e", "key-1"], "").await;
    t.both_in(ns, &["usage", "summary", "-e", "key-1"], "").await;
    t.both_in(ns, &["usage", "list", "-r", "gpt-4"], "").await;
    let out = t.both_in(ns, &["audit", "list", "-e", "key-1"], "").await;
    assert!(out.stdout.contains("| limits_set     |") && out.stdout.contains("| entity_created |"), "{out:?}");
    t.both_in(ns, &["audit", "list", "-e", "key-1", "--limit", "1"], "").await;
    t.both_in(ns, &["audit", "list", "-e", "nobody"], "").await;
}
