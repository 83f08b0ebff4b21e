//! The `rootfs-ab` installer: the device has two root filesystem slots; the
//! image goes to the one not running, the bootloader tries it for a few
//! boots ([`super::boot`]), and only a commit makes it the default. A slot
//! that never gets committed is abandoned by the bootloader itself, with no
//! network and no agent (docs/updates.md).
//!
//! It must never write to the slot the system runs from, nor to the
//! committed fallback slot: the target is always the other slot, and
//! install refuses while the two differ (an earlier update is pending).
//!
//! Slots are block devices or files. A block device's capacity is its size.
//! A regular file that already has a size is a preallocated slot (a loop
//! image, say): the image must fit in it, and it is written in place
//! without truncation, like a partition. A missing or empty file is created
//! or grown to the image's size (tests and demos).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::boot::{
    BootControl, BootEnv, FileBootControl, GrubEnv, MAX_BOOT_ATTEMPTS, Slot, UBootEnv,
};
use super::config::{BootControlKind, RootfsConfig};
use super::installer::{Activation, InstallContext, InstallError, Installer};

/// The install record in the deployment's work folder.
const STATE_FILE: &str = "rootfs.json";
/// Release name → committed version, in the data folder.
const INSTALLED_FILE: &str = "rootfs-installed.json";
const COPY_BUFFER: usize = 1 << 20;

/// Which slot ran before, and which one receives the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SlotPlan {
    from: Slot,
    to: Slot,
}

pub struct RootfsInstaller {
    pub slot_a: Option<PathBuf>,
    pub slot_b: Option<PathBuf>,
    pub boot: Box<dyn BootControl>,
    /// Trial boots of a new slot before the bootloader falls back (1–9).
    pub max_boot_attempts: u32,
    /// The agent's data folder (the record of committed versions).
    pub data_dir: PathBuf,
}

fn boot_err(e: super::boot::BootError) -> InstallError {
    InstallError::new("boot_control_failed", e.0)
}

/// The bootloader interface `cfg` selects.
pub fn boot_control(cfg: &RootfsConfig, data_dir: &Path) -> Box<dyn BootControl> {
    match cfg.boot_control {
        BootControlKind::File => Box::new(FileBootControl::new(
            cfg.boot_env_file
                .clone()
                .unwrap_or_else(|| data_dir.join("bootenv.json")),
        )),
        BootControlKind::Grub => {
            let mut g = GrubEnv::new(
                cfg.grub_env_file
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/boot/grub/grubenv")),
            );
            if let Some(p) = &cfg.grub_editenv_command {
                g.editenv = p.clone();
            }
            Box::new(g)
        }
        BootControlKind::UBoot => {
            let mut u = UBootEnv::new(data_dir.join("update"));
            if let Some(p) = &cfg.fw_printenv_command {
                u.printenv = p.clone();
            }
            if let Some(p) = &cfg.fw_setenv_command {
                u.setenv = p.clone();
            }
            Box::new(u)
        }
    }
}

impl RootfsInstaller {
    pub fn new(cfg: &RootfsConfig, data_dir: &Path) -> RootfsInstaller {
        RootfsInstaller {
            slot_a: cfg.slot_a.clone(),
            slot_b: cfg.slot_b.clone(),
            boot: boot_control(cfg, data_dir),
            max_boot_attempts: cfg.max_boot_attempts,
            data_dir: data_dir.to_path_buf(),
        }
    }

    fn slot_path(&self, slot: Slot) -> Result<&Path, InstallError> {
        let p = match slot {
            Slot::A => &self.slot_a,
            Slot::B => &self.slot_b,
        };
        p.as_deref().ok_or_else(|| {
            InstallError::new(
                "rootfs_not_configured",
                "rootfs-ab needs both slots: set slot_a and slot_b in [update.rootfs] of agent.toml",
            )
        })
    }

    fn attempts(&self) -> u32 {
        self.max_boot_attempts.clamp(1, MAX_BOOT_ATTEMPTS)
    }

    fn load_plan(ctx: &InstallContext<'_>) -> Result<Option<SlotPlan>, InstallError> {
        let path = ctx.work_dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                InstallError::new(
                    "io_error",
                    format!("the install record {} is unreadable: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(InstallError::io(
                &format!("cannot read {}", path.display()),
                &e,
            )),
        }
    }

    fn plan(ctx: &InstallContext<'_>) -> Result<SlotPlan, InstallError> {
        Self::load_plan(ctx)?.ok_or_else(|| {
            InstallError::new(
                "rootfs_not_installed",
                "no rootfs image was installed for this deployment (install must run first)",
            )
        })
    }

    fn record_installed(&self, name: &str, version: &str) -> Result<(), InstallError> {
        let path = self.data_dir.join(INSTALLED_FILE);
        let mut map: std::collections::BTreeMap<String, String> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        map.insert(name.to_string(), version.to_string());
        let body = serde_json::to_vec_pretty(&map).expect("a string map serializes");
        drover_fs::write_atomic(&path, &body, 0o644)
            .map_err(|e| InstallError::io(&format!("cannot write {}", path.display()), &e))
    }
}

/// Bytes a slot can hold; `None` when a file slot may grow.
fn slot_capacity(path: &Path) -> Result<Option<u64>, InstallError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(InstallError::io(&format!("slot {}", path.display()), &e)),
    };
    let ft = meta.file_type();
    if ft.is_block_device() {
        let mut f = File::open(path)
            .map_err(|e| InstallError::io(&format!("cannot open slot {}", path.display()), &e))?;
        let size = f
            .seek(SeekFrom::End(0))
            .map_err(|e| InstallError::io(&format!("cannot size slot {}", path.display()), &e))?;
        Ok(Some(size))
    } else if ft.is_file() {
        Ok((meta.len() > 0).then_some(meta.len()))
    } else {
        Err(InstallError::new(
            "rootfs_misconfigured",
            format!(
                "slot {} is neither a block device nor a regular file",
                path.display()
            ),
        ))
    }
}

/// Streams `src` to the start of `dst`, fsyncs, then reads the same range
/// back (past the page cache where the kernel allows) and checks both
/// hashes against `sha256`.
fn write_image(src: &Path, dst: &Path, sha256: &str) -> Result<u64, InstallError> {
    let mut input = File::open(src)
        .map_err(|e| InstallError::io(&format!("cannot open payload {}", src.display()), &e))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        // In place, like a partition: a preallocated slot keeps its size.
        .truncate(false)
        .open(dst)
        .map_err(|e| InstallError::io(&format!("cannot open slot {}", dst.display()), &e))?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut written = 0u64;
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| InstallError::io(&format!("cannot read payload {}", src.display()), &e))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| InstallError::io(&format!("cannot write slot {}", dst.display()), &e))?;
        written += n as u64;
    }
    out.sync_all()
        .map_err(|e| InstallError::io(&format!("cannot flush slot {}", dst.display()), &e))?;
    if drover_release::hex(hash.finish().as_ref()) != sha256 {
        return Err(InstallError::new(
            "rootfs_verify_failed",
            format!(
                "the payload {} changed on disk after it was verified; the download is retried",
                src.display()
            ),
        ));
    }
    // SAFETY: posix_fadvise only takes a valid open descriptor and ranges;
    // it drops clean cached pages so the read-back below hits the device.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::posix_fadvise(out.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
    drop(out);
    let mut back = File::open(dst)
        .map_err(|e| InstallError::io(&format!("cannot reopen slot {}", dst.display()), &e))?
        .take(written);
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut read = 0u64;
    loop {
        let n = back.read(&mut buf).map_err(|e| {
            InstallError::io(&format!("cannot read back slot {}", dst.display()), &e)
        })?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        read += n as u64;
    }
    if read != written || drover_release::hex(hash.finish().as_ref()) != sha256 {
        return Err(InstallError::new(
            "rootfs_verify_failed",
            format!(
                "slot {} does not read back what was written ({read} of {written} bytes, hash differs): the storage may be failing",
                dst.display()
            ),
        ));
    }
    Ok(written)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

impl Installer for RootfsInstaller {
    fn kind(&self) -> &'static str {
        "rootfs-ab"
    }

    fn install(&self, ctx: &InstallContext<'_>) -> Result<(), InstallError> {
        let env = self.boot.read().map_err(boot_err)?;
        let booted = self.boot.booted_slot().map_err(boot_err)?;
        if booted != env.slot {
            return Err(InstallError::new(
                "boot_state_conflict",
                format!(
                    "the device runs slot {booted} but the bootloader's committed slot is {} ({}): an earlier update is neither committed nor rolled back; finish it first",
                    env.slot,
                    self.boot.describe()
                ),
            ));
        }
        let target = booted.other();
        let running_path = self.slot_path(booted)?;
        let target_path = self.slot_path(target)?;
        if same_file(running_path, target_path) {
            return Err(InstallError::new(
                "rootfs_misconfigured",
                format!(
                    "slot_a and slot_b are the same ({}): they must be two different devices",
                    target_path.display()
                ),
            ));
        }
        let size = std::fs::metadata(ctx.payload_path)
            .map_err(|e| InstallError::io(&format!("payload {}", ctx.payload_path.display()), &e))?
            .len();
        if let Some(capacity) = slot_capacity(target_path)?
            && size > capacity
        {
            return Err(InstallError::new(
                "rootfs_too_large",
                format!(
                    "the image is {size} bytes but slot {target} ({}) holds {capacity}: build a smaller image or enlarge the slot",
                    target_path.display()
                ),
            ));
        }
        let plan = SlotPlan {
            from: booted,
            to: target,
        };
        let body = serde_json::to_vec(&plan).expect("plan serializes");
        drover_fs::write_atomic(&ctx.work_dir.join(STATE_FILE), &body, 0o600)
            .map_err(|e| InstallError::io("cannot record the slot plan", &e))?;
        if env.try_slot == Some(target) {
            // A trial of this slot left over from an abandoned update: stop
            // it before overwriting, so a reboot never tries a half image.
            self.boot
                .write(&BootEnv::committed(env.slot))
                .map_err(boot_err)?;
        }
        tracing::info!(slot = %target, path = %target_path.display(), bytes = size, "writing the root filesystem image");
        write_image(ctx.payload_path, target_path, &ctx.payload.sha256)?;
        Ok(())
    }

    fn activate(&self, ctx: &InstallContext<'_>) -> Result<Activation, InstallError> {
        let plan = Self::plan(ctx)?;
        if self.boot.booted_slot().map_err(boot_err)? == plan.to {
            return Ok(Activation::Done);
        }
        let env = BootEnv {
            slot: plan.from,
            try_slot: Some(plan.to),
            attempts_left: self.attempts(),
            upgrade_available: true,
        };
        self.boot.write(&env).map_err(boot_err)?;
        Ok(Activation::RebootRequired)
    }

    fn confirm_activated(&self, ctx: &InstallContext<'_>) -> Result<bool, InstallError> {
        let plan = Self::plan(ctx)?;
        Ok(self.boot.booted_slot().map_err(boot_err)? == plan.to)
    }

    fn commit(&self, ctx: &InstallContext<'_>) -> Result<(), InstallError> {
        let plan = Self::plan(ctx)?;
        let booted = self.boot.booted_slot().map_err(boot_err)?;
        if booted != plan.to {
            return Err(InstallError::new(
                "boot_state_conflict",
                format!(
                    "refusing to commit slot {}: the device runs slot {booted}",
                    plan.to
                ),
            ));
        }
        self.boot
            .write(&BootEnv::committed(plan.to))
            .map_err(boot_err)?;
        self.record_installed(&ctx.manifest.name, &ctx.manifest.version)
    }

    fn rollback(&self, ctx: &InstallContext<'_>) -> Result<Activation, InstallError> {
        let Some(plan) = Self::load_plan(ctx)? else {
            // Install never chose a slot: nothing was written.
            return Ok(Activation::Done);
        };
        self.boot
            .write(&BootEnv::committed(plan.from))
            .map_err(boot_err)?;
        Ok(if self.boot.booted_slot().map_err(boot_err)? == plan.to {
            Activation::RebootRequired
        } else {
            Activation::Done
        })
    }

    fn installed_version(&self, name: &str) -> Option<String> {
        let map: std::collections::BTreeMap<String, String> =
            serde_json::from_slice(&std::fs::read(self.data_dir.join(INSTALLED_FILE)).ok()?)
                .ok()?;
        map.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_release::{Manifest, Payload};

    struct Fixture {
        dir: tempfile::TempDir,
        manifest: Manifest,
        payload: PathBuf,
        work: PathBuf,
        image: Vec<u8>,
    }

    const OLD: u8 = 0xAA;

    impl Fixture {
        /// Slot A holds 64 KiB of the running system; slot B is empty.
        fn new(image_len: usize) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("slot_a"), vec![OLD; 64 << 10]).unwrap();
            let image: Vec<u8> = (0..image_len).map(|i| (i * 7 % 251) as u8).collect();
            let payload = dir.path().join("image.bin");
            std::fs::write(&payload, &image).unwrap();
            let work = dir.path().join("work");
            std::fs::create_dir(&work).unwrap();
            let manifest = Manifest {
                format: 1,
                name: "os".into(),
                version: "5.0.0".into(),
                device_types: vec!["gw".into()],
                created_at: 1_800_000_000,
                expires_at: None,
                payloads: vec![Payload {
                    kind: "rootfs-ab".into(),
                    sha256: drover_release::sha256_hex(&image),
                    size: image.len() as u64,
                    module: None,
                    delta: None,
                }],
                health: None,
                provenance: None,
            };
            Fixture {
                dir,
                manifest,
                payload,
                work,
                image,
            }
        }

        fn installer(&self) -> RootfsInstaller {
            RootfsInstaller {
                slot_a: Some(self.dir.path().join("slot_a")),
                slot_b: Some(self.dir.path().join("slot_b")),
                boot: Box::new(self.boot()),
                max_boot_attempts: 2,
                data_dir: self.dir.path().to_path_buf(),
            }
        }

        fn boot(&self) -> FileBootControl {
            FileBootControl::new(self.dir.path().join("bootenv.json"))
        }

        fn ctx(&self) -> InstallContext<'_> {
            InstallContext {
                manifest: &self.manifest,
                payload: &self.manifest.payloads[0],
                payload_path: &self.payload,
                work_dir: &self.work,
                data_dir: self.dir.path(),
            }
        }

        fn slot(&self, s: &str) -> Vec<u8> {
            std::fs::read(self.dir.path().join(s)).unwrap_or_default()
        }
    }

    #[test]
    fn an_image_is_written_to_the_inactive_slot_tried_and_committed() {
        let f = Fixture::new(40 << 10);
        let i = f.installer();
        let ctx = f.ctx();
        i.install(&ctx).unwrap();
        assert_eq!(f.slot("slot_b"), f.image);
        assert_eq!(
            f.slot("slot_a"),
            vec![OLD; 64 << 10],
            "running slot untouched"
        );
        assert_eq!(i.activate(&ctx).unwrap(), Activation::RebootRequired);
        assert!(!i.confirm_activated(&ctx).unwrap(), "not rebooted yet");
        assert_eq!(f.boot().simulate_boot().unwrap(), Slot::B);
        assert!(i.confirm_activated(&ctx).unwrap());
        assert_eq!(i.activate(&ctx).unwrap(), Activation::Done, "idempotent");
        i.commit(&ctx).unwrap();
        i.commit(&ctx).unwrap();
        assert_eq!(f.boot().read().unwrap(), BootEnv::committed(Slot::B));
        for _ in 0..4 {
            assert_eq!(f.boot().simulate_boot().unwrap(), Slot::B, "permanent");
        }
        assert_eq!(i.installed_version("os").as_deref(), Some("5.0.0"));
    }

    #[test]
    fn an_uncommitted_slot_falls_back_after_max_boot_attempts() {
        let f = Fixture::new(10 << 10);
        let i = f.installer();
        let ctx = f.ctx();
        i.install(&ctx).unwrap();
        i.activate(&ctx).unwrap();
        // The new system never comes up far enough to commit.
        assert_eq!(f.boot().simulate_boot().unwrap(), Slot::B);
        assert_eq!(f.boot().simulate_boot().unwrap(), Slot::B);
        assert_eq!(f.boot().simulate_boot().unwrap(), Slot::A, "fallback");
        assert!(!i.confirm_activated(&ctx).unwrap());
        assert_eq!(i.rollback(&ctx).unwrap(), Activation::Done);
        assert_eq!(f.boot().read().unwrap(), BootEnv::committed(Slot::A));
        assert_eq!(f.slot("slot_a"), vec![OLD; 64 << 10]);
        assert!(
            i.commit(&ctx).is_err(),
            "a slot that is not running is never committed"
        );
    }

    #[test]
    fn rollback_from_the_new_slot_needs_a_reboot_into_the_old_one() {
        let f = Fixture::new(10 << 10);
        let i = f.installer();
        let ctx = f.ctx();
        i.install(&ctx).unwrap();
        i.activate(&ctx).unwrap();
        f.boot().simulate_boot().unwrap();
        assert!(i.confirm_activated(&ctx).unwrap());
        // A health check failed.
        assert_eq!(i.rollback(&ctx).unwrap(), Activation::RebootRequired);
        assert_eq!(i.rollback(&ctx).unwrap(), Activation::RebootRequired);
        assert_eq!(f.boot().simulate_boot().unwrap(), Slot::A);
        assert_eq!(i.rollback(&ctx).unwrap(), Activation::Done);
        assert_eq!(f.slot("slot_a"), vec![OLD; 64 << 10]);
    }

    #[test]
    fn the_next_update_goes_to_the_other_slot_and_never_the_running_one() {
        let f = Fixture::new(10 << 10);
        let i = f.installer();
        let ctx = f.ctx();
        i.install(&ctx).unwrap();
        i.activate(&ctx).unwrap();
        f.boot().simulate_boot().unwrap();
        i.commit(&ctx).unwrap();
        // Now running B; a second deployment writes A.
        let running_b = f.slot("slot_b");
        let work2 = f.dir.path().join("work2");
        std::fs::create_dir(&work2).unwrap();
        let image2 = vec![0x55u8; 20 << 10];
        let payload2 = f.dir.path().join("image2.bin");
        std::fs::write(&payload2, &image2).unwrap();
        let mut m2 = f.manifest.clone();
        m2.payloads[0].sha256 = drover_release::sha256_hex(&image2);
        let ctx2 = InstallContext {
            manifest: &m2,
            payload: &m2.payloads[0],
            payload_path: &payload2,
            work_dir: &work2,
            data_dir: f.dir.path(),
        };
        i.install(&ctx2).unwrap();
        assert_eq!(f.slot("slot_b"), running_b, "running slot untouched");
        assert_eq!(&f.slot("slot_a")[..20 << 10], &image2[..]);
        assert_eq!(
            &f.slot("slot_a")[20 << 10..],
            &vec![OLD; 44 << 10][..],
            "a preallocated slot is written in place"
        );
    }

    #[test]
    fn install_refuses_while_an_earlier_trial_runs_and_writes_nothing() {
        let f = Fixture::new(10 << 10);
        let boot = f.boot();
        boot.write(&BootEnv {
            slot: Slot::A,
            try_slot: Some(Slot::B),
            attempts_left: 1,
            upgrade_available: true,
        })
        .unwrap();
        boot.simulate_boot().unwrap(); // running B on trial, A committed
        std::fs::write(f.dir.path().join("slot_b"), b"trial system").unwrap();
        let e = f.installer().install(&f.ctx()).unwrap_err();
        assert_eq!(e.reason, "boot_state_conflict");
        assert_eq!(f.slot("slot_a"), vec![OLD; 64 << 10]);
        assert_eq!(f.slot("slot_b"), b"trial system");
    }

    #[test]
    fn a_stale_trial_of_the_target_slot_is_cancelled_before_writing() {
        let f = Fixture::new(10 << 10);
        // An update was activated and abandoned without a reboot.
        f.boot()
            .write(&BootEnv {
                slot: Slot::A,
                try_slot: Some(Slot::B),
                attempts_left: 3,
                upgrade_available: true,
            })
            .unwrap();
        let i = f.installer();
        i.install(&f.ctx()).unwrap();
        assert_eq!(f.boot().read().unwrap(), BootEnv::committed(Slot::A));
    }

    #[test]
    fn an_image_larger_than_a_preallocated_slot_is_refused() {
        let f = Fixture::new(8 << 10);
        std::fs::write(f.dir.path().join("slot_b"), vec![1u8; 4 << 10]).unwrap();
        let e = f.installer().install(&f.ctx()).unwrap_err();
        assert_eq!(e.reason, "rootfs_too_large");
        assert!(
            e.message.contains("8192") && e.message.contains("4096"),
            "{e}"
        );
        assert_eq!(f.slot("slot_b"), vec![1u8; 4 << 10]);
    }

    #[test]
    fn a_payload_that_does_not_match_its_hash_fails_verification() {
        let mut f = Fixture::new(8 << 10);
        f.manifest.payloads[0].sha256 = "00".repeat(32);
        let e = f.installer().install(&f.ctx()).unwrap_err();
        assert_eq!(e.reason, "rootfs_verify_failed");
    }

    #[test]
    fn misconfigured_slots_are_refused() {
        let f = Fixture::new(8 << 10);
        let mut i = f.installer();
        i.slot_b = None;
        assert_eq!(
            i.install(&f.ctx()).unwrap_err().reason,
            "rootfs_not_configured"
        );
        i.slot_b = i.slot_a.clone();
        assert_eq!(
            i.install(&f.ctx()).unwrap_err().reason,
            "rootfs_misconfigured"
        );
        assert_eq!(f.slot("slot_a"), vec![OLD; 64 << 10]);
    }

    #[test]
    fn rollback_before_install_chose_a_slot_changes_nothing() {
        let f = Fixture::new(8 << 10);
        assert_eq!(f.installer().rollback(&f.ctx()).unwrap(), Activation::Done);
        assert!(!f.dir.path().join("bootenv.json").exists());
    }
}
