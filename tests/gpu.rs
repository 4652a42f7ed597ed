//! GPUs in rootless sandboxes, without GPU hardware: `compute-worker exec
//! --gpus` as the unprivileged test user against a fake driver root.
//!
//! The fake driver root is a double of what the NVIDIA driver puts on a
//! host: stub libraries with the real SONAMEs (built with gcc, no
//! dependencies) in an `ld.so.cache` made by `ldconfig -r`, device nodes
//! that are real character devices (1:3, the same device as /dev/null),
//! and the kernel module's `/proc/driver/nvidia` files, which discovery
//! reads for a driver root other than `/` (`COMPUTE_WORKER_GPU_ROOT`).
//! Inside the sandbox a static C program `dlopen`s the libraries by SONAME
//! and opens the device nodes read-write.

mod e2e;
mod sandbox_env;
mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sandbox_env::{env, Run};

const VERSION: &str = "999.88.77";
const UUID_A: &str = "GPU-aaaaaaaa-1111-2222-3333-444444444444";
const UUID_B: &str = "GPU-bbbbbbbb-1111-2222-3333-444444444444";
const LIBDIR: &str = "usr/lib/x86_64-linux-gnu";

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// A stub shared object with `soname`, and no dependencies.
fn stub_library(dir: &Path, file: &str, soname: &str) {
    sh(Command::new("gcc")
        .args(["-shared", "-fPIC", "-nostdlib", "-o"])
        .arg(dir.join(file))
        .arg(format!("-Wl,-soname,{soname}"))
        .arg(fixtures().join("stub.c")));
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpu")
}

/// A character device with the numbers of /dev/null, mode 0666.
fn char_node(path: &Path) {
    sh(Command::new("mknod")
        .args(["-m", "0666"])
        .arg(path)
        .args(["c", "1", "3"]));
}

fn gpu_information(root: &Path, bus: &str, model: &str, uuid: &str, minor: u32) {
    let d = root.join("proc/driver/nvidia/gpus").join(bus);
    fs::create_dir_all(&d).unwrap();
    fs::write(
        d.join("information"),
        format!(
            "Model: \t\t {model}\nIRQ:   \t\t 36\nGPU UUID: \t {uuid}\nVideo BIOS: \t ??.??.??.??.??\n\
             Bus Type: \t PCIe\nDMA Size: \t 47 bits\nDMA Mask: \t 0x7fffffffffff\n\
             Bus Location: \t {bus}\nDevice Minor: \t {minor}\nGPU Excluded:\t No\n"
        ),
    )
    .unwrap();
}

/// A fake driver root with two GPUs (minors 0 and 1) under `name` in the
/// test work directory; with `cdi`, also an nvidia-ctk style CDI spec.
fn driver_root(name: &str, cdi: bool) -> PathBuf {
    let root = env().work.join(name);
    let lib = root.join(LIBDIR);
    fs::create_dir_all(&lib).unwrap();
    for (base, soname) in [
        ("libcuda.so", "libcuda.so.1"),
        ("libnvidia-ml.so", "libnvidia-ml.so.1"),
        (
            "libnvidia-ptxjitcompiler.so",
            "libnvidia-ptxjitcompiler.so.1",
        ),
        ("libnvidia-nvvm.so", "libnvidia-nvvm.so.4"),
        ("libnvidia-encode.so", "libnvidia-encode.so.1"), // video only
    ] {
        stub_library(&lib, &format!("{base}.{VERSION}"), soname);
    }
    // Left over from an older driver: never mounted.
    stub_library(&lib, "libnvidia-cfg.so.550.54.14", "libnvidia-cfg.so.1");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/ld.so.conf"), format!("/{LIBDIR}\n")).unwrap();
    sh(Command::new("ldconfig").arg("-r").arg(&root));

    fs::create_dir_all(root.join("dev")).unwrap();
    for n in [
        "nvidiactl",
        "nvidia-uvm",
        "nvidia-uvm-tools",
        "nvidia0",
        "nvidia1",
    ] {
        char_node(&root.join("dev").join(n));
    }
    fs::create_dir_all(root.join("proc/driver/nvidia")).unwrap();
    fs::write(
        root.join("proc/driver/nvidia/version"),
        format!("NVRM version: NVIDIA UNIX x86_64 Kernel Module  {VERSION}  Release Build  (fake)\nGCC version:  gcc version 12.2.0\n"),
    )
    .unwrap();
    gpu_information(&root, "0000:01:00.0", "Fake GPU A", UUID_A, 0);
    gpu_information(&root, "0000:02:00.0", "Fake GPU B", UUID_B, 1);

    fs::create_dir_all(root.join("usr/bin")).unwrap();
    let smi = root.join("usr/bin/nvidia-smi");
    fs::write(&smi, "#!/bin/sh\necho fake nvidia-smi\n").unwrap();
    fs::set_permissions(&smi, fs::Permissions::from_mode(0o755)).unwrap();
    let fw = root.join(format!("lib/firmware/nvidia/{VERSION}"));
    fs::create_dir_all(&fw).unwrap();
    fs::write(fw.join("gsp_ga10x.bin"), "firmware").unwrap();

    if cdi {
        let r = root.display();
        fs::create_dir_all(root.join("etc/cdi")).unwrap();
        // As `nvidia-ctk cdi generate` writes it (hooks, additionalGids and
        // host paths included): the worker must clean it for rootless use.
        fs::write(
            root.join("etc/cdi/nvidia.yaml"),
            format!(
                r#"cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
  - name: "0"
    containerEdits:
      deviceNodes: [{{path: /dev/nvidia0, hostPath: {r}/dev/nvidia0}}]
  - name: {UUID_A}
    containerEdits:
      deviceNodes: [{{path: /dev/nvidia0, hostPath: {r}/dev/nvidia0}}]
  - name: all
    containerEdits:
      deviceNodes:
        - {{path: /dev/nvidia0, hostPath: {r}/dev/nvidia0}}
        - {{path: /dev/nvidia1, hostPath: {r}/dev/nvidia1}}
containerEdits:
  env: [NVIDIA_VISIBLE_DEVICES=void, FROM_CDI_SPEC=yes]
  additionalGids: [44]
  deviceNodes:
    - {{path: /dev/nvidiactl, hostPath: {r}/dev/nvidiactl}}
    - {{path: /dev/nvidia-uvm, hostPath: {r}/dev/nvidia-uvm}}
  hooks:
    - {{hookName: createContainer, path: /usr/bin/nvidia-cdi-hook, args: [nvidia-cdi-hook, update-ldcache, --folder, /{LIBDIR}]}}
  mounts:
    - {{hostPath: {r}/{LIBDIR}/libcuda.so.{VERSION}, containerPath: /{LIBDIR}/libcuda.so.{VERSION}, options: [ro, nosuid, nodev, rbind, rprivate]}}
    - {{hostPath: {r}/{LIBDIR}/libnvidia-ml.so.{VERSION}, containerPath: /{LIBDIR}/libnvidia-ml.so.{VERSION}, options: [ro, nosuid, nodev, rbind, rprivate]}}
"#
            ),
        )
        .unwrap();
    }
    root
}

/// The static `gpucheck` program: `dlopen`s each name, opens each path
/// read-write.
fn gpucheck() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = env().work.join("gpucheck");
        sh(Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&bin)
            .arg(fixtures().join("gpucheck.c"))
            .arg("-ldl"));
        bin
    })
}

fn plain_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| driver_root("driver-root", false))
}

/// `exec --gpus SPEC` with the driver under `root`, running `script`
/// (gpucheck is at /gpucheck).
fn exec_gpus(root: &Path, gpus: Option<&str>, extra: &[&str], script: &str) -> Run {
    let e = env();
    let bind = format!("{}:/gpucheck:ro", gpucheck().display());
    let mut opts = vec!["--bind", &bind];
    if let Some(g) = gpus {
        opts.extend(["--gpus", g]);
    }
    opts.extend_from_slice(extra);
    let mut cmd = e.exec_cmd(&opts, &["sh", "-c", script]);
    cmd.env("COMPUTE_WORKER_GPU_ROOT", root);
    Run(cmd.output().unwrap())
}

const CHECK: &str = "/gpucheck libcuda.so.1 libcuda.so libnvidia-ml.so.1 libnvidia-ptxjitcompiler.so.1 libnvidia-nvvm.so.4 /dev/nvidiactl /dev/nvidia-uvm";

#[test]
fn a_sandbox_gets_its_gpu_the_driver_libraries_and_the_environment() {
    let root = plain_root();
    let run = exec_gpus(
        root,
        Some(UUID_B),
        &["-e", "LD_LIBRARY_PATH=/opt/image/lib"],
        &format!(
            "{CHECK} /dev/nvidia1; \
             ls /dev | grep nvidia | tr '\\n' ' '; echo; \
             ls /usr/local/nvidia/lib64 | tr '\\n' ' '; echo; \
             echo LD_LIBRARY_PATH=$LD_LIBRARY_PATH; echo PATH=$PATH; \
             nvidia-smi; \
             ls /lib/firmware/nvidia/{VERSION}"
        ),
    );
    let out = run.ok();
    for lib in [
        "libcuda.so.1",
        "libcuda.so",
        "libnvidia-ml.so.1",
        "libnvidia-ptxjitcompiler.so.1",
        "libnvidia-nvvm.so.4",
    ] {
        assert!(out.contains(&format!("dlopen {lib}: ok")), "{lib}: {out}");
    }
    assert!(out.contains("dlopen libcuda.so.1: ok cuInit=0"), "{out}");
    for node in ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia1"] {
        assert!(out.contains(&format!("open {node}: ok")), "{node}: {out}");
    }
    let devs = out.lines().nth(8).unwrap_or_default();
    assert_eq!(
        devs.split_whitespace().collect::<Vec<_>>(),
        ["nvidia-uvm", "nvidia-uvm-tools", "nvidia1", "nvidiactl"],
        "only the selected GPU's node: {out}"
    );
    let libs = out.lines().nth(9).unwrap_or_default();
    assert!(libs.contains(&format!("libcuda.so.{VERSION}")), "{libs}");
    assert!(
        !libs.contains("libnvidia-cfg"),
        "stale version mounted: {libs}"
    );
    assert!(
        !libs.contains("libnvidia-encode"),
        "video library without the capability: {libs}"
    );
    assert!(
        out.contains("LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/opt/image/lib"),
        "{out}"
    );
    assert!(out.contains("PATH=/usr/local/sbin"), "{out}");
    assert!(out.contains(":/usr/local/nvidia/bin\n"), "{out}");
    assert!(out.contains("fake nvidia-smi"), "{out}");
    assert!(out.contains("gsp_ga10x.bin"), "{out}");
    assert!(
        run.stderr()
            .contains(&format!("GPUs: Fake GPU B ({UUID_B})")),
        "{}",
        run.stderr()
    );
}

#[test]
fn the_capabilities_of_the_image_choose_the_libraries() {
    let run = exec_gpus(
        plain_root(),
        Some("nvidia.com/gpu=0"),
        &["-e", "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video"],
        "ls /usr/local/nvidia/lib64; ls /dev",
    );
    let out = run.ok();
    assert!(out.contains("libnvidia-encode.so.1"), "{out}");
    assert!(out.contains("nvidia0") && !out.contains("nvidia1"), "{out}");
}

#[test]
fn without_gpus_a_sandbox_has_no_driver() {
    let run = exec_gpus(plain_root(), None, &[], "ls /dev; /gpucheck libcuda.so.1");
    assert_eq!(run.code(), 1, "{}", run.stdout());
    assert!(!run.stdout().contains("nvidia"), "{}", run.stdout());
    assert!(
        run.stdout()
            .contains("dlopen libcuda.so.1: libcuda.so.1: cannot open"),
        "{}",
        run.stdout()
    );
}

#[test]
fn a_requested_gpu_that_is_missing_fails_and_never_runs_on_cpu() {
    let run = exec_gpus(
        plain_root(),
        Some("GPU-00000000-dead-beef-0000-000000000000"),
        &[],
        "echo RAN",
    );
    assert_eq!(run.code(), 125);
    assert!(!run.stdout().contains("RAN"));
    let err = run.stderr();
    assert!(
        err.contains("GPU-00000000-dead-beef-0000-000000000000 is not on this host"),
        "{err}"
    );
    assert!(
        err.contains(UUID_A) && err.contains(UUID_B),
        "names what the host has: {err}"
    );

    let empty = sandbox_env::user_dir("no-driver-root", 0o755);
    let run = exec_gpus(&empty, Some("all"), &[], "echo RAN");
    assert_eq!(run.code(), 125);
    assert!(!run.stdout().contains("RAN"));
    assert!(
        run.stderr()
            .contains("GPUs were requested, but no NVIDIA driver"),
        "{}",
        run.stderr()
    );
}

#[test]
fn a_cdi_spec_is_read_cleaned_for_rootless_and_applied() {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(|| driver_root("driver-root-cdi", true));
    let run = exec_gpus(
        root,
        Some(&format!("nvidia.com/gpu={UUID_A}")),
        &[],
        &format!(
            "{CHECK} /dev/nvidia0; ls /dev | grep nvidia | tr '\\n' ' '; echo; \
             echo FROM_CDI_SPEC=$FROM_CDI_SPEC; ls /{LIBDIR}"
        ),
    );
    // The spec's additionalGids and hooks would make a rootless start fail.
    let out = run.ok();
    assert!(out.contains("dlopen libcuda.so.1: ok cuInit=0"), "{out}");
    assert!(out.contains("open /dev/nvidia0: ok"), "{out}");
    assert!(out.contains("FROM_CDI_SPEC=yes"), "{out}");
    assert!(
        out.contains(&format!("libcuda.so.{VERSION}")),
        "host path kept: {out}"
    );
    let devs = out.lines().find(|l| l.contains("nvidiactl")).unwrap();
    assert!(!devs.contains("nvidia1"), "only the spec's device: {devs}");
}

/// `serve` with Codabench's USE_GPU/GPU_DEVICE and one GPU per slot: the
/// job's program sees its slot's GPU, and the worker log names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_gives_each_slot_its_gpu_and_logs_it() {
    let root = plain_root().display().to_string();
    let queue = support::amqp::unique_queue("gpu-serve");
    let serve = e2e::Serve::start_with(
        "serve-gpu",
        &queue,
        &[
            ("USE_GPU", "true"),
            ("GPU_DEVICE", &format!("nvidia.com/gpu={UUID_B}")),
            ("COMPUTE_WORKER_GPUS_PER_SLOT", "1"),
            ("COMPUTE_WORKER_GPU_ROOT", &root),
        ],
    );
    let site = support::site::FakeSite::start(611, 7).await;
    let args = e2e::submission_only_args(
        &site,
        "gpu-submission",
        "sh -c 'ls /dev /usr/local/nvidia/lib64 > /app/output/predictions.txt'",
        60,
    );
    e2e::publish(&queue, &args);
    let st = e2e::wait_for_status(&site, &serve, "Scoring", 90).await;
    assert_eq!(
        st.last().map(String::as_str),
        Some("Scoring"),
        "{st:?}\n{}",
        serve.log()
    );
    let up = site
        .upload("prediction_result.zip")
        .expect("prediction uploaded");
    let listing = e2e::zip_file(&up.body, "predictions.txt");
    assert!(
        listing.contains("nvidia1") && !listing.contains("nvidia0"),
        "{listing}"
    );
    assert!(listing.contains("libcuda.so.1"), "{listing}");
    let log = serve.log();
    assert!(
        log.contains(&format!("Fake GPU B ({UUID_B})")) && log.contains("runs with GPUs"),
        "{log}"
    );
    serve.stop();
}

#[test]
fn serve_refuses_to_start_without_the_requested_gpu() {
    let e = env();
    let out = e
        .command(&["serve"])
        .env("BROKER_URL", "pyamqp://guest:guest@127.0.0.1:1//")
        .env("USE_GPU", "true")
        .env("GPU_DEVICE", "GPU-00000000-dead-beef-0000-000000000000")
        .env("COMPUTE_WORKER_GPU_ROOT", plain_root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "USE_GPU=true: GPU GPU-00000000-dead-beef-0000-000000000000 is not on this host"
        ),
        "{err}"
    );
}

/// `doctor` shows the driver and its GPUs, and for each device node the
/// worker's user cannot use, what to do; with USE_GPU=true that fails it.
#[test]
fn doctor_shows_the_driver_the_gpus_and_what_to_fix() {
    let e = env();
    let root = driver_root("doctor-root", false);
    fs::remove_file(root.join("dev/nvidia-uvm")).unwrap();
    // 0660 root:video, and the test user is not in `video`.
    let node = root.join("dev/nvidia1");
    sh(Command::new("chgrp").arg("video").arg(&node));
    fs::set_permissions(&node, fs::Permissions::from_mode(0o660)).unwrap();
    let doctor = |use_gpu: &str| {
        let mut cmd = e.command(&["doctor", "--json"]);
        cmd.env("COMPUTE_WORKER_GPU_ROOT", &root)
            .env("USE_GPU", use_gpu)
            .env_remove("BROKER_URL");
        let rows = sandbox_env::doctor_rows(&cmd.output().unwrap());
        (rows["gpu driver"].clone(), rows["gpu devices"].clone())
    };
    let ((status, detail, _), (devices, _, fix)) = doctor("false");
    assert_eq!(status, "ok", "{detail}");
    assert!(
        detail.contains(VERSION) && detail.contains(UUID_A) && detail.contains("Fake GPU B"),
        "{detail}"
    );
    assert_eq!(devices, "warn", "{fix}");
    assert!(
        fix.contains("nvidia-uvm is missing") && fix.contains("nvidia-modprobe -u -c0"),
        "{fix}"
    );
    assert!(fix.contains("must be in group `video`"), "{fix}");
    let (_, (devices, _, fix)) = doctor("true");
    assert_eq!(devices, "fail", "{fix}");
}

/// The NVML double (tests/fixtures/gpu/nvml_double.c), built as
/// `libnvidia-ml.so.1` in a directory of its own (for `LD_LIBRARY_PATH`),
/// answering for the fake driver root's GPUs.
fn nvml_double() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = env().work.join("nvml-double");
        fs::create_dir_all(&dir).unwrap();
        sh(Command::new("gcc")
            .args(["-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1", "-o"])
            .arg(dir.join("libnvidia-ml.so.1"))
            .arg(format!("-DUUID_A=\"{UUID_A}\""))
            .arg(format!("-DUUID_B=\"{UUID_B}\""))
            .arg(format!("-DDRIVER_VERSION=\"{VERSION}\""))
            .arg(fixtures().join("nvml_double.c")));
        dir
    })
}

/// `run --gpus UUID_B` on the fake driver root, the submission running
/// `command`; `nvml`: where the worker finds `libnvidia-ml.so.1`.
fn local_run(name: &str, command: &str, nvml: Option<&Path>) -> Run {
    let e = env();
    let sub = sandbox_env::user_dir(&format!("{name}-submission"), 0o755);
    fs::write(sub.join("metadata"), format!("command: {command}\n")).unwrap();
    let results = sandbox_env::user_dir(&format!("{name}-results"), 0o755);
    let mut cmd = e.command(&[
        "run",
        "--rootfs",
        e.rootfs.to_str().unwrap(),
        "--submission",
        sub.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
        "--gpus",
        UUID_B,
    ]);
    cmd.env("COMPUTE_WORKER_GPU_ROOT", plain_root());
    if let Some(dir) = nvml {
        cmd.env("LD_LIBRARY_PATH", dir);
    }
    Run(cmd.output().unwrap())
}

/// `run --gpus`: a local job's programs get the GPU too.
#[test]
fn a_local_run_gets_its_gpu() {
    let out = local_run(
        "gpu-run",
        "sh -c 'ls /dev/nvidia*; echo LD=$LD_LIBRARY_PATH'",
        None,
    );
    out.ok();
    // `run` shows the programs' output, prefixed, as it runs.
    let shown = out.stderr();
    assert!(
        shown.contains("[prediction program] /dev/nvidia1"),
        "{shown}"
    );
    assert!(!shown.contains("/dev/nvidia0"), "{shown}");
    assert!(
        shown.contains("[prediction program] LD=/usr/local/nvidia/lib64"),
        "{shown}"
    );
    assert!(
        shown.contains("runs with GPUs") && shown.contains("Fake GPU B"),
        "{shown}"
    );
    // No NVML here (the host has no driver): the report says so, the
    // job still succeeds.
    assert!(
        shown.contains("; GPU figures unavailable: no NVIDIA driver ("),
        "{shown}"
    );
}

/// A program's resource report gives its GPU's peak memory and mean
/// utilisation, sampled from NVML while it runs.
#[test]
fn the_resource_report_gives_the_gpus_peak_memory_and_utilisation() {
    let out = local_run("gpu-usage", "sleep 1.5", Some(nvml_double()));
    out.ok();
    let shown = out.stderr();
    let report = shown
        .lines()
        .find(|l| l.starts_with("[prediction] resources of the submission"))
        .unwrap_or_else(|| panic!("no resource report: {shown}"));
    // The double says 1234 MiB, then 2345 MiB, then 1500 MiB: the peak
    // is kept, whichever sample it was.
    assert!(
        report.ends_with(&format!(
            "; GPU {UUID_B}: peak memory 2.3 GiB, utilisation 56 %"
        )),
        "{report}"
    );
    assert!(!report.contains(UUID_A), "{report}");
}
