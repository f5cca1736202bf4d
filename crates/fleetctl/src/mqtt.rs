//! MQTT logins in Mosquitto's password file: one `user:$7$<iterations>$<salt>$<hash>`
//! line per user (PBKDF2-HMAC-SHA512, the format `mosquitto_passwd` writes),
//! so fleetctl gives vehicles (username = vehicle id, password = its bearer
//! token) and the ingest bridge their logins without `mosquitto_passwd`, and
//! then asks Mosquitto to reload (SIGHUP to the pid in its `pid_file`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args;

/// `mosquitto_passwd`'s iteration count. Tokens are random 256-bit secrets,
/// so a slow hash would buy nothing and make every reconnect cost more.
pub const ITERATIONS: u32 = 101;
const SALT_BYTES: usize = 12;
const HASH_BYTES: usize = 64;

/// Where fleetctl keeps vehicles' MQTT logins, shared by `vehicles` and `simulate`.
#[derive(Debug, Clone, Default, Args)]
pub struct MqttLoginArgs {
    /// Mosquitto password file to give the vehicle a login in (username =
    /// vehicle id, password = its token); created if missing.
    #[arg(long, env = "FLEETWATCH_MQTT_PASSWORD_FILE")]
    pub mqtt_password_file: Option<PathBuf>,
    /// Mosquitto's `pid_file`: after writing the password file, send that
    /// process SIGHUP so the change takes effect at once.
    #[arg(
        long,
        env = "FLEETWATCH_MQTT_PID_FILE",
        requires = "mqtt_password_file"
    )]
    pub mqtt_reload_pid_file: Option<PathBuf>,
}

/// A `$7$` hash of `password` with a fresh random salt.
pub fn hash(password: &str) -> String {
    let salt: [u8; SALT_BYTES] = rand::random();
    hash_with(password, &salt, ITERATIONS)
}

fn hash_with(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; HASH_BYTES];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), salt, iterations, &mut out);
    format!("$7${iterations}${}${}", B64.encode(salt), B64.encode(out))
}

/// Whether `entry` (the part after `user:`) is a `$7$` hash of `password`.
/// Other formats (`$6$`, plain text) never match, so they get rewritten.
pub fn verify(entry: &str, password: &str) -> bool {
    let mut parts = entry.split('$');
    let (Some(""), Some("7"), Some(iterations), Some(salt), Some(_), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(iterations), Ok(salt)) = (iterations.parse::<u32>(), B64.decode(salt)) else {
        return false;
    };
    // Not constant-time: the file is the secret here, not the comparison.
    hash_with(password, &salt, iterations) == entry
}

/// Usernames the password file can hold: it separates user and hash with
/// `:` and users with newlines.
pub fn check_username(user: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !user.is_empty() && !user.contains([':', '\n', '\r']),
        "{user:?} cannot be an MQTT username in a Mosquitto password file (no ':' or line breaks); \
         such a vehicle can still use HTTP, gRPC and the WebSocket"
    );
    Ok(())
}

/// A Mosquitto password file, edited in memory and saved atomically.
#[derive(Debug)]
pub struct PasswordFile {
    path: PathBuf,
    /// Every line as read; lines that are not `user:hash` are kept as they are.
    lines: Vec<String>,
    changed: bool,
}

impl PasswordFile {
    /// Reads `path`; a missing file is an empty one.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let lines = match std::fs::read_to_string(path) {
            Ok(s) => s.lines().map(str::to_string).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Self {
            path: path.to_path_buf(),
            lines,
            changed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn position(&self, user: &str) -> Option<usize> {
        self.lines
            .iter()
            .position(|l| l.split_once(':').is_some_and(|(u, _)| u == user))
    }

    /// The stored hash of `user`.
    pub fn get(&self, user: &str) -> Option<&str> {
        self.position(user)
            .and_then(|i| self.lines[i].split_once(':'))
            .map(|(_, h)| h)
    }

    /// Adds or replaces `user`'s password.
    pub fn set(&mut self, user: &str, password: &str) -> anyhow::Result<()> {
        check_username(user)?;
        let line = format!("{user}:{}", hash(password));
        match self.position(user) {
            Some(i) => self.lines[i] = line,
            None => self.lines.push(line),
        }
        self.changed = true;
        Ok(())
    }

    /// Sets the password unless the file already holds exactly this one;
    /// returns whether it wrote.
    pub fn ensure(&mut self, user: &str, password: &str) -> anyhow::Result<bool> {
        if self.get(user).is_some_and(|h| verify(h, password)) {
            return Ok(false);
        }
        self.set(user, password)?;
        Ok(true)
    }

    /// Removes `user`; returns whether it was there.
    pub fn remove(&mut self, user: &str) -> bool {
        let Some(i) = self.position(user) else {
            return false;
        };
        self.lines.remove(i);
        self.changed = true;
        true
    }

    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Writes the file atomically (a temp file renamed over it). A file that
    /// existed keeps its mode and owner: as root, Mosquitto reads it as the
    /// mosquitto user after dropping privileges. A new one is 0600.
    pub fn save(&mut self) -> anyhow::Result<()> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
        let path = &self.path;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let old = std::fs::metadata(path).ok();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.fleetctl-{}", std::process::id()));
        let mut text = self.lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        let written = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            if let Some(m) = &old {
                f.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
                // Only root may give a file away; others keep their own.
                let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
            }
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write {}", path.display()));
        }
        self.changed = false;
        Ok(())
    }
}

/// SIGHUP to the process in `pid_file`: Mosquitto rereads its password file and ACL.
pub fn reload(pid_file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(pid_file).with_context(|| {
        format!(
            "cannot read {}: is Mosquitto running with `pid_file {}`? \
             Reload it yourself (SIGHUP, e.g. `systemctl reload mosquitto`)",
            pid_file.display(),
            pid_file.display()
        )
    })?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a process id", pid_file.display()))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .with_context(|| {
        format!(
            "cannot signal Mosquitto (pid {pid} from {}); is it running, and as this user?",
            pid_file.display()
        )
    })
}

/// Saves `file` if it changed, then reloads Mosquitto or says how to.
pub fn save_and_reload(file: &mut PasswordFile, pid_file: Option<&Path>) -> anyhow::Result<()> {
    if !file.changed() {
        return Ok(());
    }
    file.save()?;
    match pid_file {
        Some(p) => {
            reload(p)?;
            eprintln!("updated {}; Mosquitto reloads it", file.path().display());
        }
        None => eprintln!(
            "updated {}; reload Mosquitto (SIGHUP, e.g. `systemctl reload mosquitto`) for it to take effect",
            file.path().display()
        ),
    }
    Ok(())
}

/// Writes (or replaces) vehicle `id`'s MQTT login: its token is its password.
pub fn set_vehicle_login(args: &MqttLoginArgs, id: &str, token: &str) -> anyhow::Result<()> {
    let Some(path) = &args.mqtt_password_file else {
        return Ok(());
    };
    let mut file = PasswordFile::load(path)?;
    file.set(id, token)?;
    save_and_reload(&mut file, args.mqtt_reload_pid_file.as_deref())
}

/// Fails before `vehicles add` registers `id` when it could not get an MQTT
/// login. A user already in the file belongs to someone else (the bridge,
/// a vehicle removed from the database): refuse rather than take over its login.
pub fn check_new_vehicle_login(args: &MqttLoginArgs, id: &str) -> anyhow::Result<()> {
    let Some(path) = &args.mqtt_password_file else {
        return Ok(());
    };
    check_username(id)?;
    let file = PasswordFile::load(path)?;
    anyhow::ensure!(
        file.get(id).is_none(),
        "{} already has an MQTT user {id:?} (the bridge's, or a vehicle registered before?): \
         choose another vehicle id, or remove that login with `fleetctl mqtt passwd {} {id} --delete`",
        path.display(),
        path.display()
    );
    Ok(())
}

/// `fleetctl mqtt ...`.
pub fn run(cmd: crate::cli::MqttCommand) -> anyhow::Result<()> {
    let crate::cli::MqttCommand::Passwd {
        file,
        user,
        generate,
        delete,
        reload_pid_file,
    } = cmd;
    let mut pw = PasswordFile::load(&file)?;
    if delete {
        anyhow::ensure!(pw.remove(&user), "{} has no user {user:?}", file.display());
    } else if generate {
        let bytes: [u8; 24] = rand::random();
        let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        pw.set(&user, &password)?;
        save_and_reload(&mut pw, reload_pid_file.as_deref())?;
        println!("{password}");
        return Ok(());
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        let password = line.trim_end_matches(['\r', '\n']);
        anyhow::ensure!(
            !password.is_empty(),
            "no password on stdin: pipe one in (`printf '%s\\n' \"$PW\" | fleetctl mqtt passwd ...`) or use --generate"
        );
        pw.set(&user, password)?;
    }
    save_and_reload(&mut pw, reload_pid_file.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_a_mosquitto_passwd_hash() {
        // Written by mosquitto_passwd 2.0.11 for the password "secret".
        let entry = "$7$101$nTq6dMG6rveQbIPM$R+gbABWHk88KoBFNqzrFun9GCIz19mYCEcerQqk30enp47AlKSQLEYMQjWduAezRPpFERtMk5j9Tsa4oAzmaBw==";
        assert!(verify(entry, "secret"));
        assert!(!verify(entry, "Secret"));
        assert!(!verify("$6$abc$def", "secret"));
        assert!(!verify("secret", "secret"));
    }

    #[test]
    fn hashes_are_salted_and_verify() {
        let (a, b) = (hash("fw_token"), hash("fw_token"));
        assert_ne!(a, b);
        assert!(a.starts_with("$7$101$"));
        assert!(verify(&a, "fw_token") && verify(&b, "fw_token"));
    }

    #[test]
    fn edits_keep_other_lines_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, "# comment\nbridge:$7$101$x$y\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut f = PasswordFile::load(&path).unwrap();
        assert!(f.ensure("v1", "t1").unwrap());
        assert!(!f.ensure("v1", "t1").unwrap(), "same password: no write");
        f.set("v2", "t2").unwrap();
        assert!(f.remove("v2") && !f.remove("v2"));
        f.save().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["# comment", "bridge:$7$101$x$y"]);
        assert!(lines[2].starts_with("v1:$7$"));
        assert_eq!(lines.len(), 3);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert!(f.set("a:b", "x").is_err());

        let fresh = dir.path().join("sub/new");
        let mut f = PasswordFile::load(&fresh).unwrap();
        f.set("v", "t").unwrap();
        f.save().unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
