//! `cargo xtask vm`: a command run inside a VM booted on Debian's 6.1
//! kernel (the line Debian 12 nodes run), under qemu's software emulation
//! (nested KVM does not boot here). The kernel comes from Debian's package,
//! unpacked under `target/vm/`, never installed. The guest's root is this
//! machine's own tree shared read-only over 9p, with tmpfs on /tmp and /run,
//! so the project's binaries and test executables are there as built; a
//! second, writable share carries the command's script and exit status.
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, ensure};

use crate::{cargo, cmd, prereqs};

/// Modules the guest needs before its root is mounted (with their
/// dependencies, resolved by modprobe against the unpacked tree).
const BOOT_MODULES: [&str; 4] = ["9p", "9pnet_virtio", "virtio_pci", "virtio_net"];

/// The guest's init, in the initramfs: load the boot modules, mount the
/// host's tree and the output share, hand over to the command's script.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in /mods/*.ko; do insmod "$m" || echo "vm: insmod $m failed"; done
opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$opts,ro" root /mnt || { echo "vm: cannot mount the host's tree"; echo o > /proc/sysrq-trigger; sleep 10; }
mount -t tmpfs tmpfs /mnt/tmp; mount -t tmpfs tmpfs /mnt/run
mkdir /mnt/run/vm; mount -t 9p -o "$opts" out /mnt/run/vm
mount --move /proc /mnt/proc; mount --move /sys /mnt/sys; mount --move /dev /mnt/dev
exec switch_root /mnt /bin/sh /run/vm/run.sh
"#;

pub fn vm(kernel: &str, command: &[OsString]) -> Result<ExitCode> {
    ensure!(kernel == "debian-6.1", "--kernel {kernel:?}: only debian-6.1 is known so far");
    ensure!(!command.is_empty(), "give the command to run in the VM after `--`, e.g. `cargo xtask vm -- uname -r`");
    prereqs::ensure_debian_packages(&["qemu-system-x86", "busybox-static", "kmod"])?;
    let dir = cargo::target_dir().join("vm");
    let (root, version) = debian_kernel(&dir.join("debian-6.1"))?;
    let initrd = initramfs(&dir, &root, &version)?;
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("run.sh"), script(&root, command)?)?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{version}"));
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-nographic", "-no-reboot", "-m", "4096", "-smp", "2", "-accel", "tcg"])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet loglevel=1 panic=-1"])
        .args(["-virtfs", "local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap"])
        .arg("-virtfs")
        .arg(format!("local,path={},mount_tag=out,security_model=none", out.display()));
    let status = cmd::status(&mut qemu)?;
    ensure!(status.success(), "qemu failed: {}", cmd::describe(status));
    let code = std::fs::read_to_string(out.join("status"))
        .context("the command did not finish in the VM (no exit status came back)")?;
    let code: u8 = code.trim().parse().with_context(|| format!("exit status {code:?}"))?;
    Ok(ExitCode::from(code))
}

/// The newest `linux-image-6.1.0-N-amd64` Debian serves, unpacked under
/// `dir` once (with its module index built): the tree and the version.
fn debian_kernel(dir: &Path) -> Result<(PathBuf, String)> {
    let root = dir.join("root");
    if let Some(version) = unpacked_version(&root) {
        return Ok((root, version));
    }
    let list = cmd::output(Command::new("apt-cache").args(["search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-amd64$"]))?;
    let newest = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|p| p.trim_start_matches("linux-image-6.1.0-").trim_end_matches("-amd64").parse::<u32>().unwrap_or(0))
        .context("apt-cache lists no linux-image-6.1.0-*-amd64 (is bookworm in the apt sources?)")?
        .to_owned();
    std::fs::create_dir_all(dir)?;
    cmd::run(Command::new("apt-get").args(["download", &newest]).current_dir(dir)).with_context(|| format!("downloading {newest}"))?;
    let deb = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let version = unpacked_version(&root).context("no kernel in the package")?;
    cmd::run(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
    Ok((root, version))
}

fn unpacked_version(root: &Path) -> Option<String> {
    let entries = std::fs::read_dir(root.join("boot")).ok()?;
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_owned)).next()
}

/// busybox, the boot modules in load order, and `INIT`, as a gzipped cpio.
fn initramfs(dir: &Path, root: &Path, version: &str) -> Result<PathBuf> {
    let tree = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "mods", "proc", "sys", "dev", "mnt"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).context("busybox (Debian's busybox-static)")?;
    let mut order: Vec<String> = Vec::new();
    for m in BOOT_MODULES {
        let deps = cmd::output(Command::new("modprobe").arg("-d").arg(root).args(["-S", version, "--show-depends", m]))?;
        for path in deps.lines().filter_map(|l| l.strip_prefix("insmod ")).map(str::trim) {
            if !order.iter().any(|o| o == path) {
                order.push(path.to_owned());
            }
        }
    }
    for (i, path) in order.iter().enumerate() {
        let name = Path::new(path).file_name().context("module path")?.to_string_lossy().into_owned();
        std::fs::copy(path, tree.join("mods").join(format!("{i:02}-{name}")))?;
    }
    std::fs::write(tree.join("init"), INIT)?;
    cmd::run(Command::new("chmod").arg("+x").arg(tree.join("init")))?;
    let initrd = dir.join("initrd.gz");
    let pack = format!("cd {} && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1 > {}", quote(&tree), quote(&initrd));
    cmd::run(Command::new("sh").args(["-c", &pack]))?;
    Ok(initrd)
}

/// What the guest runs once its root is the host's tree: the mounts a
/// node has, modules loaded from the unpacked tree on demand, the command
/// from this directory, its exit status written back, then power off.
fn script(root: &Path, command: &[OsString]) -> Result<String> {
    let cwd = std::env::current_dir()?;
    let words: Vec<String> = command.iter().map(|w| quote(Path::new(w))).collect();
    Ok(format!(
        r#"mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mkdir -p /run/netns
# The kernel asks for modules (veth, sch_ingress…) by running this.
printf '#!/bin/sh\nexec /usr/sbin/modprobe -d "%s" "$@"\n' {modules} > /run/modprobe && chmod +x /run/modprobe
echo /run/modprobe > /proc/sys/kernel/modprobe
ip link set lo up
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PYTHONDONTWRITEBYTECODE=1
cd {cwd}
echo "vm: Linux $(uname -r)"
{cmd}
echo $? > /run/vm/status
echo o > /proc/sysrq-trigger
sleep 10
"#,
        cwd = quote(&cwd),
        modules = quote(root),
        cmd = words.join(" "),
    ))
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}
