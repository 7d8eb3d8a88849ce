//! `weave-cni install` and `uninstall`, for the DaemonSet's init container: the plugin binary
//! as `weave-net` in the CNI bin directory and `10-weave.conflist` (weave-net, then portmap)
//! in the CNI config directory, each written to a temporary file and renamed into place, so a
//! runtime never reads half a file. A record of what was written (`.weave-net.installed` in
//! the bin directory) lets `uninstall` remove exactly that and nothing of other networks.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The plugin's installed name (the `type` in configurations), as in Weave Net.
pub const PLUGIN_NAME: &str = "weave-net";
/// The network configuration's file name, as in Weave Net.
pub const CONFLIST_NAME: &str = "10-weave.conflist";
/// The record of what `install` wrote.
const RECORD_NAME: &str = ".weave-net.installed";

/// The chained configuration: weave-net then portmap. `1.0.0` because Debian's reference
/// plugins (portmap) accept no later version.
pub fn conflist() -> String {
    let value = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weave",
        "plugins": [
            {"name": "weave", "type": PLUGIN_NAME, "hairpinMode": true},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    });
    format!("{:#}\n", value)
}

/// Installs `plugin` (this program) into `bin_dir` and the conflist into `conf_dir`; returns
/// the paths written.
pub fn install(plugin: &Path, bin_dir: &Path, conf_dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(bin_dir)?;
    fs::create_dir_all(conf_dir)?;
    let bin = bin_dir.join(PLUGIN_NAME);
    let bytes = fs::read(plugin)
        .map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", plugin.display())))?;
    write_atomically(&bin, &bytes, 0o755)?;
    let conf = conf_dir.join(CONFLIST_NAME);
    write_atomically(&conf, conflist().as_bytes(), 0o644)?;
    let written = vec![bin, conf];
    let record: String = written
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    write_atomically(&bin_dir.join(RECORD_NAME), record.as_bytes(), 0o644)?;
    Ok(written)
}

/// Removes what [`install`] recorded in `bin_dir`; returns the paths removed.
pub fn uninstall(bin_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let record_path = bin_dir.join(RECORD_NAME);
    let record = match fs::read_to_string(&record_path) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for line in record.lines().filter(|l| !l.is_empty()) {
        let path = PathBuf::from(line);
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("remove {line}: {e}"))),
        }
    }
    fs::remove_file(&record_path)?;
    Ok(removed)
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // A leading dot: runtimes read only *.conf, *.conflist and *.json from the config dir.
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_then_uninstall_touches_only_its_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
        fs::create_dir_all(&conf).unwrap();
        fs::write(conf.join("05-other.conflist"), "{}").unwrap();
        let plugin = dir.path().join("weave-cni");
        fs::write(&plugin, b"\x7fELF").unwrap();

        let written = install(&plugin, &bin, &conf).unwrap();
        assert_eq!(written.len(), 2);
        assert_eq!(fs::read(bin.join(PLUGIN_NAME)).unwrap(), b"\x7fELF");
        let list: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(conf.join(CONFLIST_NAME)).unwrap()).unwrap();
        assert_eq!(list["plugins"][0]["type"], PLUGIN_NAME);
        assert_eq!(list["plugins"][1]["type"], "portmap");
        // Installing again (a restarted init container) replaces, never duplicates.
        install(&plugin, &bin, &conf).unwrap();

        let removed = uninstall(&bin).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(conf.join("05-other.conflist").exists());
        assert!(!conf.join(CONFLIST_NAME).exists());
        assert!(fs::read_dir(&bin).unwrap().next().is_none());
        assert!(uninstall(&bin).unwrap().is_empty());
    }
}
