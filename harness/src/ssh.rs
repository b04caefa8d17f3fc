//! Root over ssh between a lab's hosts, as the selftests' `REMOTE_TYPE=ssh` expects: keys made
//! in the guests for this lab alone (never the user's), every host's key known to every other
//! (no prompt, no `accept-new`), host names in `/etc/hosts`, and persistent connections
//! (`ControlMaster`), so that after the first command to a host each costs a few
//! milliseconds rather than a key exchange.
//!
//! The keys are made by `ssh-keygen` in each guest: a restored guest's kernel randomness is
//! reseeded from the host's when it resumes (the agent's `resume`), so no two labs, nor two
//! hosts of one, share a key.

use futures::future::try_join_all;

use crate::error::{Error, Result};
use crate::spec::Spec;
use crate::vm::{Cmd, Vm};

pub use crate::spec::SSH_PACKAGES as PACKAGES;

/// Makes the host's sshd key and root's own, prints both public keys (host, then root's).
/// `sshd` needs its privilege-separation user and an empty directory to chroot into.
const KEYS: &str = r#"set -e
grep -q '^sshd:' /etc/passwd || echo 'sshd:x:100:65534::/run/sshd:/bin/false' >> /etc/passwd
mkdir -p /run/sshd /root/.ssh /etc/ssh
chmod 700 /root/.ssh
rm -f /etc/ssh/ssh_host_ed25519_key* /root/.ssh/id_ed25519*
ssh-keygen -q -t ed25519 -N '' -C "$(hostname)" -f /etc/ssh/ssh_host_ed25519_key
ssh-keygen -q -t ed25519 -N '' -C "root@$(hostname)" -f /root/.ssh/id_ed25519
cat /etc/ssh/ssh_host_ed25519_key.pub /root/.ssh/id_ed25519.pub
"#;

/// The lab's sshd: keys only, root allowed, no PAM or DNS (neither is there), the
/// environment a remote test passes kept.
const SSHD_CONFIG: &str = "\
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
Subsystem sftp internal-sftp
";

/// Where the lab's sshd configuration is written (beside Debian's, which it does not read).
const SSHD_CONFIG_PATH: &str = "/etc/ssh/lab_sshd_config";

/// Root's client settings: the lab's key, known hosts checked strictly, never a prompt, and
/// one connection per host kept for 10 minutes, shared by every command.
const CLIENT_CONFIG: &str = "\
Host *
    User root
    IdentityFile /root/.ssh/id_ed25519
    BatchMode yes
    StrictHostKeyChecking yes
    UserKnownHostsFile /root/.ssh/known_hosts
    ControlMaster auto
    ControlPath /run/ssh-%C
    ControlPersist 600
    ConnectTimeout 30
";

/// Each host's two public keys, as [`KEYS`] prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Keys {
    host: String,
    root: String,
}

impl Keys {
    fn parse(output: &str, host: &str) -> Result<Keys> {
        let mut lines = output.lines().filter(|l| l.starts_with("ssh-ed25519 "));
        match (lines.next(), lines.next()) {
            (Some(h), Some(r)) => Ok(Keys {
                host: h.to_string(),
                root: r.to_string(),
            }),
            _ => Err(Error::invalid(
                format!("{host}: ssh-keygen printed no keys: {output:?}"),
                "the host needs openssh-client and openssh-server (the lab adds them when ssh is on)",
            )),
        }
    }
}

/// Lets every host of `spec` (booted as `vms`, in its order) reach every other as root over
/// ssh by name or address, and starts each sshd.
pub async fn connect(vms: &[Vm], spec: &Spec) -> Result<()> {
    let printed = try_join_all(vms.iter().map(|vm| vm.succeed(Cmd::script(KEYS)))).await?;
    let keys = printed
        .iter()
        .zip(vms)
        .map(|(out, vm)| Keys::parse(out, vm.name()))
        .collect::<Result<Vec<_>>>()?;
    let authorized: String = keys.iter().map(|k| format!("{}\n", k.root)).collect();
    let known = known_hosts(spec, &keys);
    try_join_all(vms.iter().map(|vm| {
        let (authorized, known) = (authorized.clone(), known.clone());
        async move {
            vm.write_file("/root/.ssh/authorized_keys", authorized, 0o600)
                .await?;
            vm.write_file("/root/.ssh/known_hosts", known, 0o644)
                .await?;
            vm.write_file("/root/.ssh/config", CLIENT_CONFIG, 0o600)
                .await?;
            vm.write_file(SSHD_CONFIG_PATH, SSHD_CONFIG, 0o644).await?;
            // sshd listens before it goes to the background: once this returns, it answers.
            vm.succeed(Cmd::script(format!(
                "/usr/sbin/sshd -f {SSHD_CONFIG_PATH} -E /run/sshd.log"
            )))
            .await
        }
    }))
    .await?;
    Ok(())
}

/// `known_hosts`: each host's key under its name and every address it has.
fn known_hosts(spec: &Spec, keys: &[Keys]) -> String {
    spec.hosts()
        .iter()
        .zip(keys)
        .map(|(host, keys)| {
            let mut names = vec![host.name.clone()];
            names.extend(host.addresses().map(|a| a.addr().to_string()));
            format!("{} {}\n", names.join(","), keys.host)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hosts_key_is_known_by_its_name_and_every_address() {
        let spec = crate::Topology::parse(
            "t.toml",
            "[[host]]\nname = \"a\"\n[[host]]\nname = \"b\"\nnics = 2\n",
        )
        .expect("valid")
        .spec;
        let keys = |n: &str| Keys {
            host: format!("ssh-ed25519 HOST{n} {n}"),
            root: format!("ssh-ed25519 ROOT{n} root@{n}"),
        };
        assert_eq!(
            known_hosts(&spec, &[keys("a"), keys("b")]),
            "a,192.168.88.1,fd00:88::1 ssh-ed25519 HOSTa a\n\
             b,192.168.88.2,fd00:88::2 ssh-ed25519 HOSTb b\n"
        );
    }

    #[test]
    fn keys_are_read_from_what_ssh_keygen_printed_and_nothing_else_passes() {
        let out = "ssh-ed25519 AAAAhost host1\nssh-ed25519 AAAAroot root@host1\n";
        assert_eq!(
            Keys::parse(out, "host1").expect("two keys"),
            Keys {
                host: "ssh-ed25519 AAAAhost host1".into(),
                root: "ssh-ed25519 AAAAroot root@host1".into()
            }
        );
        let err = Keys::parse("sh: ssh-keygen: not found\n", "host1").expect_err("no keys");
        assert!(err.to_string().contains("printed no keys"), "{err}");
    }
}
