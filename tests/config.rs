//! Configuration layering as an operator meets it: a TOML file, a `.env`
//! file, the environment and flags, in that order of strength, shown by
//! `compute-worker config`, with templates and errors that name the key and
//! the file.

mod sandbox_env;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// A scratch directory standing for an operator's home.
struct Home(PathBuf);

impl Home {
    fn new(name: &str) -> Home {
        let dir = std::env::temp_dir().join(format!("cw-config-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Home(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p
    }

    /// The worker with only this home's layers: no stray variable of the
    /// test's own environment, no config file of the host's.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_compute-worker"));
        for (k, _) in std::env::vars() {
            let codabench = ["BROKER_", "HOST_DIRECTORY", "COMPETITION_", "USE_GPU"];
            if k.starts_with("COMPUTE_WORKER_") || codabench.iter().any(|p| k.starts_with(p)) {
                cmd.env_remove(k);
            }
        }
        cmd.args(args)
            .current_dir(&self.0)
            .env("HOME", &self.0)
            .env("XDG_CONFIG_HOME", self.0.join("xdg"));
        cmd
    }

    fn config_json(&self, cmd: &mut Command) -> Value {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// (value, source) of `key` in `config --json`.
fn setting(doc: &Value, key: &str) -> (String, String) {
    let row = doc["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("no setting {key} in {doc}"));
    (
        row["value"].as_str().unwrap_or("-").to_string(),
        row["source"].as_str().unwrap().to_string(),
    )
}

#[test]
fn each_layer_overrides_the_one_below() {
    let home = Home::new("layers");
    let file = home.write(
        "worker.toml",
        "slots = 2\nmemory = \"1g\"\npids = 10\nqueue = \"from-file\"\ndrain_timeout = \"1m\"\n",
    );
    home.write(
        ".env",
        "COMPUTE_WORKER_MEMORY=2g\nCOMPUTE_WORKER_PIDS=20\nCOMPUTE_WORKER_QUEUE=from-dotenv\n",
    );
    let mut cmd = home.command(&[
        "--config",
        file.to_str().unwrap(),
        "config",
        "--json",
        "--queue",
        "from-flag",
    ]);
    cmd.env("COMPUTE_WORKER_PIDS", "30")
        .env("COMPUTE_WORKER_QUEUE", "from-env");
    let doc = home.config_json(&mut cmd);
    let file_source = format!("config file {}", file.display());
    let dotenv_source = format!(".env {}", home.0.join(".env").display());
    assert_eq!(setting(&doc, "slots"), ("2".into(), file_source.clone()));
    assert_eq!(setting(&doc, "drain_timeout"), ("1m".into(), file_source));
    assert_eq!(setting(&doc, "memory"), ("2g".into(), dotenv_source));
    assert_eq!(setting(&doc, "pids"), ("30".into(), "environment".into()));
    assert_eq!(
        setting(&doc, "queue"),
        ("from-flag".into(), "command line".into())
    );
    assert_eq!(
        setting(&doc, "verify_broker_tls"),
        ("false".into(), "default".into())
    );
    assert_eq!(doc["config_file"], file.to_str().unwrap());
}

#[test]
fn the_users_file_is_found_then_the_given_one_wins() {
    let home = Home::new("search");
    let user_file = home.write("xdg/compute-worker/config.toml", "slots = 5\n");
    let doc = home.config_json(&mut home.command(&["config", "--json"]));
    assert_eq!(
        setting(&doc, "slots"),
        ("5".into(), format!("config file {}", user_file.display()))
    );
    let other = home.write("other.toml", "slots = 6\n");
    let mut cmd = home.command(&["config", "--json"]);
    cmd.env("COMPUTE_WORKER_CONFIG", &other);
    assert_eq!(setting(&home.config_json(&mut cmd), "slots").0, "6");
}

#[test]
fn codabench_names_work_in_every_layer_and_secrets_stay_hidden() {
    let home = Home::new("codabench");
    let file = home.write(
        "c.toml",
        "broker_url = \"pyamqp://worker:file-pw-123@rabbit:5672//\"\n\
         competition_container_http_proxy = \"http://proxy:proxy-pw-456@proxy:3128\"\n\
         host_directory = \"/srv/codabench-{{uid}}\"\n\
         broker_use_ssl = false\n",
    );
    home.write(".env", "USE_GPU=True\n");
    let uid = nix::unistd::getuid();
    for args in [&["config"][..], &["config", "--json"][..]] {
        let mut cmd = home.command(&["--config", file.to_str().unwrap()]);
        let out = cmd.args(args).output().unwrap();
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(
            !all.contains("file-pw-123") && !all.contains("proxy-pw-456"),
            "{all}"
        );
        assert!(all.contains("pyamqp://worker:***@rabbit:5672//"), "{all}");
        assert!(all.contains(&format!("/srv/codabench-{uid}")), "{all}");
    }
    let mut cmd = home.command(&["--config", file.to_str().unwrap(), "config", "--json"]);
    let doc = home.config_json(&mut cmd);
    assert_eq!(setting(&doc, "use_gpu").0, "True");
    // A TOML `false` leaves a variable that any value turns on unset.
    assert_eq!(
        setting(&doc, "broker_use_ssl"),
        ("-".into(), "default".into())
    );
}

#[test]
fn bad_keys_and_values_name_the_key_and_the_file() {
    let home = Home::new("errors");
    let cases = [
        (
            "memory = \"lots\"\n",
            "bad value for `memory`: `lots` is not a size",
        ),
        (
            "BROKER_URL = \"amqp://h\"\n",
            "unknown key `BROKER_URL`; did you mean `broker_url`?",
        ),
        ("colour = \"blue\"\n", "unknown key `colour`"),
        ("log_format = \"xml\"\n", "`xml` is not one of: human, json"),
        ("slots = \"two\"\n", "bad value for `slots`: `two`"),
        (
            "state_dir = \"{{env.CW_NOT_SET_ANYWHERE}}/s\"\n",
            "CW_NOT_SET_ANYWHERE",
        ),
        ("image_dir = \"/x/{{home}}\"\n", "unknown template {{home}}"),
        (
            "slots = [1, 2]\n",
            "`slots` must be a string, a number or a boolean",
        ),
        ("slots = \n", "is not valid TOML"),
    ];
    for (i, (toml, expected)) in cases.iter().enumerate() {
        let file = home.write(&format!("bad{i}.toml"), toml);
        let out = home
            .command(&["--config", file.to_str().unwrap(), "images"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {}", text(&out));
        assert!(stderr.contains(expected), "{toml}: {stderr}");
        assert!(stderr.contains(file.to_str().unwrap()), "{toml}: {stderr}");
    }
    // The environment and .env are checked too, naming the variable.
    let out = home
        .command(&["images"])
        .env("COMPUTE_WORKER_PIDS", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("COMPUTE_WORKER_PIDS (from the environment)"),
        "{}",
        text(&out)
    );
    let out = home
        .command(&["--config", "/nonexistent/worker.toml", "images"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/worker.toml does not exist")
    );
}

/// A templated path in the config file is where the sandbox really works.
#[test]
fn file_settings_and_templates_reach_the_sandbox() {
    let e = sandbox_env::env();
    let config = e.work.join("templated.toml");
    fs::write(&config, "state_dir = \"{{env.HOME}}/state-of-{{user}}\"\n").unwrap();
    sandbox_env::chown_tree(&config, e.uid, e.gid);
    let out = e
        .command(&[
            "--config",
            config.to_str().unwrap(),
            "exec",
            "--keep",
            "--rootfs",
            e.rootfs.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo from-the-sandbox > /result",
        ])
        .env_remove("COMPUTE_WORKER_STATE_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let expected = e.work.join(format!("state-of-{}", e.user));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let kept = stderr
        .lines()
        .find_map(|l| l.split("kept in ").nth(1))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        Path::new(kept).starts_with(&expected),
        "{kept} not under {expected:?}"
    );
    assert_eq!(
        fs::read_to_string(Path::new(kept).join("result")).unwrap(),
        "from-the-sandbox\n"
    );
}

#[test]
fn codabench_v127_settings_and_aliases_are_read_and_shown() {
    let home = Home::new("v127");
    let dotenv = home.write(
        ".env",
        "HUMAN_IN_THE_LOOP=1\nCOMPETITION_ALLOW_IMAGE_PULL=False\n\
         CODALAB_IGNORE_CLEANUP_STEP= TRUE \nBROKER_SSL_CA_CERTS=/etc/ca/rabbit.pem\n",
    );
    let mut cmd = home.command(&["config", "--json"]);
    cmd.env("SERIALIZED", "True");
    let doc = home.config_json(&mut cmd);
    let from_dotenv = format!(".env {}", dotenv.display());
    assert_eq!(
        setting(&doc, "human_in_the_loop"),
        ("1".into(), from_dotenv.clone())
    );
    assert_eq!(setting(&doc, "competition_allow_image_pull").0, "False");
    assert_eq!(
        setting(&doc, "compute_worker_no_cleanup"),
        ("False".into(), "default".into())
    );
    // Aliases fill the worker's own settings, from the alias's layer.
    assert_eq!(
        setting(&doc, "broker_ca_file"),
        ("/etc/ca/rabbit.pem".into(), from_dotenv)
    );
    assert_eq!(
        setting(&doc, "log_format"),
        ("json".into(), "environment".into())
    );
}

#[test]
fn a_value_that_is_not_a_boolean_is_refused_naming_the_variable() {
    let home = Home::new("bool");
    for (var, value) in [
        ("USE_GPU", "yes"),
        ("HUMAN_IN_THE_LOOP", "on"),
        ("COMPUTE_WORKER_NO_CLEANUP", "no"),
        ("SERIALIZED", "tRuE"),
    ] {
        for args in [&["config"][..], &["serve"][..]] {
            let out = home.command(args).env(var, value).output().unwrap();
            let all = text(&out);
            assert_eq!(out.status.code(), Some(2), "{var}={value}: {all}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(var) && err.contains(&format!("`{value}` is not a boolean")),
                "{var}={value}: {all}"
            );
        }
    }
}

#[test]
fn image_store_settings_take_a_list_and_a_size_from_the_file() {
    let home = Home::new("stores");
    let file = home.write(
        "worker.toml",
        "additional_image_stores = [\"/srv/shared/a\", \"/srv/shared/b\"]\nmax_image_size = \"8g\"\n",
    );
    let doc = home.config_json(&mut home.command(&[
        "--config",
        file.to_str().unwrap(),
        "config",
        "--json",
    ]));
    let source = format!("config file {}", file.display());
    assert_eq!(
        setting(&doc, "additional_image_stores"),
        ("/srv/shared/a:/srv/shared/b".into(), source.clone())
    );
    assert_eq!(setting(&doc, "max_image_size"), ("8g".into(), source));
    for (bad, why) in [
        ("additional_image_stores = [1]", "the items must be strings"),
        ("additional_image_stores = [\"/a:/b\"]", "contains `:`"),
        ("max_image_size = \"lots\"", "max_image_size"),
    ] {
        let file = home.write("bad.toml", bad);
        let out = home
            .command(&["--config", file.to_str().unwrap(), "config"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(why), "{bad}: {}", text(&out));
    }
}
