//! Starting a command straight inside its cgroup with `clone3(CLONE_INTO_CGROUP)`.
//!
//! Entering the cgroup after a fork (writing `cgroup.procs` between fork and exec, which is all
//! `Command::pre_exec` allows) moves a process that still shares its memory copy-on-write with
//! the agent, and that cost about 10 ms per command under TCG, a third of a request. Measured
//! in a guest with a static C probe, 40 spawns of `/bin/true` each, three runs: fork and exec
//! 7.3–9.5 ms; fork, enter the cgroup, exec 13.9–20.6 ms; clone3 into the cgroup 8.0–9.6 ms.
//!
//! What the child does between the clone and the exec is what `std::process` does after its
//! fork: set up stdin, stdout and stderr, its own process group, default SIGPIPE and an empty
//! signal mask, the working directory; then exec, with a file that has no `#!` line run by
//! `/bin/sh` as `execvp` does. Everything it touches is made before the clone: the child of a
//! threaded process may only make async-signal-safe calls.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

/// `CLONE_INTO_CGROUP` (Linux 5.7), a 64-bit flag that only `clone3` takes.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// A command started by [`spawn`]: its pid (and process group) and the near ends of its pipes.
#[derive(Debug)]
pub struct Spawned {
    pub pid: libc::pid_t,
    pub stdin: Option<File>,
    pub stdout: File,
    pub stderr: File,
}

/// What to start, in the form the child needs it.
#[derive(Debug)]
pub struct Plan<'a> {
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a str,
    /// A pipe for stdin (true), or `/dev/null`.
    pub stdin: bool,
}

/// Starts `plan` in the cgroup whose directory `cgroup` is open.
pub fn spawn(plan: &Plan, cgroup: &File) -> io::Result<Spawned> {
    let program = plan
        .argv
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no program"))?;
    let path = resolve(program, plan.env, plan.cwd)?;
    let argv = cstrings(plan.argv.iter().map(String::as_str))?;
    // For a file without `#!`: `/bin/sh FILE ARGS...`, as execvp does.
    let sh_argv = cstrings(
        ["/bin/sh", path.to_str().unwrap_or(program)]
            .into_iter()
            .chain(plan.argv.iter().skip(1).map(String::as_str)),
    )?;
    let env: Vec<String> = plan.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let envp = cstrings(env.iter().map(String::as_str))?;
    let path = cstring(path.as_os_str().as_bytes())?;
    let sh = cstring(b"/bin/sh")?;
    let cwd = cstring(plan.cwd.as_bytes())?;
    let (argv_p, sh_argv_p, envp_p) = (pointers(&argv), pointers(&sh_argv), pointers(&envp));

    let (stdin_r, stdin_w) = match plan.stdin {
        true => pipe().map(|(r, w)| (r, Some(w)))?,
        false => (OwnedFd::from(File::open("/dev/null")?), None),
    };
    let (stdout_r, stdout_w) = output_pipe()?;
    let (stderr_r, stderr_w) = output_pipe()?;
    // The child writes its errno here if it cannot exec; the exec closes it (CLOEXEC).
    let (report_r, report_w) = pipe()?;

    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = CLONE_INTO_CGROUP;
    args.exit_signal = libc::SIGCHLD as u64;
    args.cgroup = cgroup.as_raw_fd() as u64;
    // SAFETY: clone3 without CLONE_VM is a fork: the child gets a copy of this address space and
    // runs only `child`, which makes async-signal-safe calls on memory made above, and never
    // returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if pid == 0 {
        // SAFETY: see above; the pointers' arrays and strings live in this copy of the memory.
        unsafe {
            child(&Child {
                stdin: stdin_r.as_raw_fd(),
                stdout: stdout_w.as_raw_fd(),
                stderr: stderr_w.as_raw_fd(),
                report: report_w.as_raw_fd(),
                cwd: cwd.as_ptr(),
                path: path.as_ptr(),
                sh: sh.as_ptr(),
                argv: argv_p.as_ptr(),
                sh_argv: sh_argv_p.as_ptr(),
                envp: envp_p.as_ptr(),
            })
        }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let pid = pid as libc::pid_t;
    // The child's ends are the child's: with ours open, reading the pipes would never end.
    drop((stdin_r, stdout_w, stderr_w, report_w));
    let mut errno = [0u8; 4];
    match File::from(report_r).read(&mut errno) {
        Ok(4) => {
            let _ = wait(pid);
            Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
        }
        _ => Ok(Spawned {
            pid,
            stdin: stdin_w.map(File::from),
            stdout: File::from(stdout_r),
            stderr: File::from(stderr_r),
        }),
    }
}

/// Waits for the process `pid` [`spawn`] started to end.
pub fn wait(pid: libc::pid_t) -> io::Result<ExitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes one int into `status`, which lives across the call.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Where `program` is, as execvp would find it: a name with a slash as given (from `cwd` if
/// relative), another in the directories of the `PATH` in `env`.
fn resolve(program: &str, env: &[(String, String)], cwd: &str) -> io::Result<std::path::PathBuf> {
    if program.contains('/') {
        return Ok(Path::new(cwd).join(program));
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(crate::exec::PATH, |(_, v)| v.as_str());
    let mut denied = false;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(cwd).join(dir).join(program);
        match candidate.metadata() {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(candidate),
            Ok(m) if m.is_file() => denied = true,
            _ => {}
        }
    }
    Err(io::Error::from_raw_os_error(if denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// A pipe for a program's output, as large as [`crate::exec::PIPE_SIZE`] where the kernel
/// allows: fewer, larger pieces for the agent to send (the default holds 64 KiB).
fn output_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe()?;
    let size = i32::try_from(crate::exec::PIPE_SIZE).unwrap_or(i32::MAX);
    // Best effort: a smaller pipe only costs speed.
    let _ = nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size));
    Ok((r, w))
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn cstrings<'a>(items: impl Iterator<Item = &'a str>) -> io::Result<Vec<CString>> {
    items.map(|s| cstring(s.as_bytes())).collect()
}

/// A NULL-terminated array of the strings' pointers, as exec takes it.
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// What the child works with: raw fds and pointers only.
struct Child {
    stdin: libc::c_int,
    stdout: libc::c_int,
    stderr: libc::c_int,
    report: libc::c_int,
    cwd: *const libc::c_char,
    path: *const libc::c_char,
    sh: *const libc::c_char,
    argv: *const *const libc::c_char,
    sh_argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
}

/// The child, from the clone to the exec; writes its errno to `report` and exits 127 if a step
/// fails. Only async-signal-safe calls.
unsafe fn child(c: &Child) -> ! {
    // SAFETY (all of the below): plain system calls on fds and NUL-terminated strings that
    // live in this process's copy of the parent's memory.
    unsafe {
        let fail = |report: libc::c_int| -> ! {
            let errno = *libc::__errno_location();
            libc::write(report, errno.to_ne_bytes().as_ptr().cast(), 4);
            libc::_exit(127)
        };
        for (from, to) in [(c.stdin, 0), (c.stdout, 1), (c.stderr, 2)] {
            if libc::dup2(from, to) < 0 {
                fail(c.report);
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail(c.report);
        }
        // Rust ignores SIGPIPE; a command must die of it, as in a shell (`yes | head`).
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if libc::chdir(c.cwd) != 0 {
            fail(c.report);
        }
        // Its failure is not the command's: it runs, with the agent's score.
        let _ = crate::limits::reset_oom_score_in_child();
        libc::execve(c.path, c.argv, c.envp);
        if *libc::__errno_location() == libc::ENOEXEC {
            libc::execve(c.sh, c.sh_argv, c.envp);
        }
        fail(c.report)
    }
}
