//! Single-id mode, as a user with no /etc/subuid or /etc/subgid range
//! (`cwnoids`, made by scripts/dev-setup.sh): the real binary maps only
//! that user (as 0), `chown` and the `set*id` calls succeed without effect,
//! the rest of the sandbox's posture holds, and `doctor`, `config` and the
//! job log say what the mode gives up. A submission goes through `serve`.

mod e2e;
mod sandbox_env;
mod support;

use e2e::*;
use sandbox_env::{doctor_rows, env_noids};
use support::amqp::unique_queue;

#[test]
fn a_program_runs_as_root_of_the_only_id() {
    let e = env_noids();
    let out = e
        .sh("echo hello; id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map")
        .ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["hello", "0", "0"], "{out}");
    let maps: Vec<Vec<&str>> = lines[3..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let (uid, gid) = (e.uid.to_string(), e.gid.to_string());
    assert_eq!(maps, [["0", uid.as_str(), "1"], ["0", gid.as_str(), "1"]]);
}

#[test]
fn chown_succeeds_without_effect() {
    let e = env_noids();
    // busybox's chown is chown(2)/lchown(2) (the set*id calls: see the
    // Python scenario in tests/codabench_examples.rs).
    let out = e
        .sh("touch /tmp/f && chown 1234:5678 /tmp/f && echo chowned; \
             chown -h 42:42 /tmp/f && echo lchowned; \
             stat -c %u:%g /tmp/f")
        .ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["chowned", "lchowned", "0:0"], "{out}");
}

#[test]
fn the_rest_of_the_posture_holds() {
    let e = env_noids();
    let status = e.sh("cat /proc/self/status").ok();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name}:\n{status}"))
    };
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapBnd:"), "0000000000000000");
    // The filter still refuses what it refuses in the normal mode.
    let r = e.sh("unshare -U true; echo $?");
    assert_ne!(r.ok().trim(), "0", "unshare -U succeeded");
}

#[test]
fn a_user_that_requires_subids_is_refused() {
    let e = env_noids();
    let r = e.exec(&["--id-mode", "subids"], &["true"]);
    assert_ne!(r.code(), 0);
    assert!(r.stderr().contains("/etc/subuid"), "{}", r.stderr());
}

#[test]
fn doctor_and_config_say_single_id_mode_and_what_it_gives_up() {
    let e = env_noids();
    let out = e.command(&["doctor", "--json"]).output().unwrap();
    let rows = doctor_rows(&out);
    let (status, detail, fix) = &rows["id mode"];
    assert_eq!(status, "warn", "{detail}");
    assert!(detail.starts_with("single"), "{detail}");
    assert!(
        detail.contains("every file in it belongs to one owner"),
        "{detail}"
    );
    assert!(detail.contains("cannot be separated by uid"), "{detail}");
    assert!(fix.contains("setup-host"), "{fix}");
    for name in ["subuid", "subgid", "newuidmap", "newgidmap"] {
        assert_eq!(rows[name].0, "skip", "{name}: {:?}", rows[name]);
    }
    assert_eq!(
        rows["overlay in userns"].0, "ok",
        "{:?}",
        rows["overlay in userns"]
    );

    let out = e.command(&["config"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("id mode:") && l.contains("single") && l.contains("one owner")),
        "{text}"
    );
    assert!(text.contains("COMPUTE_WORKER_ID_MODE"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_goes_through_serve_without_subordinate_ids() {
    let queue = unique_queue("e2e-noids");
    // The image's User is 33:33: single-id mode runs it as 0.
    let serve = Serve::start_as(env_noids(), "serve-noids", &queue, &[]);
    let site = demo_site(541).await;
    publish(&queue, &prediction_args(&site, IMAGE, 60));
    let st = wait_for_status(&site, &serve, "Scoring", 90).await;
    assert_eq!(
        st.last().map(String::as_str),
        Some("Scoring"),
        "{st:?}\n{}",
        serve.log()
    );
    publish(&queue, &scoring_args(&site, IMAGE));
    let st = wait_for_status(&site, &serve, "Finished", 90).await;
    assert_eq!(
        st.last().map(String::as_str),
        Some("Finished"),
        "{st:?}\n{}",
        serve.log()
    );
    assert_eq!(site.scores(), [serde_json::json!({"accuracy": 1.0})]);
    let log = serve.log();
    assert!(
        log.contains("each program's ids: single-id mode"),
        "the job log says the mode:\n{log}"
    );
    serve.stop();
}
