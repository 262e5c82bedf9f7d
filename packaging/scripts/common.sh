# Shared by every maintainer script of the deb and the rpm (build.py puts it at the top of
# each). POSIX sh: it runs on a bare Debian minbase (no systemd, no adduser) as well as on a
# booted RHEL. The sysusers entry below is systemd/mgh-reporter.sysusers.conf (build.py).
set -e
APP=/usr/lib/mgh-reporter
UNIT=mgh-reporter.service

# systemd is running as PID 1 (installed is not enough: containers, chroots, image builds).
booted() { [ -d /run/systemd/system ]; }

# The daemon's user and group: systemd-sysusers where it exists (the same entry the package
# ships in /usr/lib/sysusers.d), else groupadd/useradd (shadow-utils, passwd: always there).
ensure_user() {
    if getent group mgh-reporter >/dev/null 2>&1 \
        && getent passwd mgh-reporter >/dev/null 2>&1; then
        return 0
    fi
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers --replace=/usr/lib/sysusers.d/mgh-reporter.conf - <<'SYSUSERS' || true
@SYSUSERS@
SYSUSERS
    fi
    getent group mgh-reporter >/dev/null 2>&1 || groupadd --system mgh-reporter
    getent passwd mgh-reporter >/dev/null 2>&1 || useradd --system --gid mgh-reporter \
        --home-dir /var/lib/mgh-reporter --no-create-home --shell /usr/sbin/nologin \
        --comment "mgh-reporter daemon" mgh-reporter
}

# The shared outbox directory (setgid, group-writable): systemd-tmpfiles where it exists (the
# package's tmpfiles entry, as at every boot), else the same mode by hand, only when missing.
make_state_dir() {
    if command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create /usr/lib/tmpfiles.d/mgh-reporter.conf
    elif [ ! -d /var/lib/mgh-reporter ]; then
        install -d -m 2770 -o mgh-reporter -g mgh-reporter /var/lib/mgh-reporter
    fi
}

# Choose the interpreter (link $APP/python3 to it) and byte-compile the app for it, as Debian's
# py3compile does: /usr is read-only to the daemon, so without this every start would compile
# boto3 in memory again.
use_python() {
    py=$("$APP/select-python")
    ln -sfn "$py" "$APP/python3"
    if ! "$py" -I -S -m compileall -q -j 0 "$APP" >/dev/null 2>&1; then
        echo "mgh-reporter: some modules were not byte-compiled for $py;" \
             "they are compiled in memory at each start instead" >&2
    fi
    echo "mgh-reporter: runs on $py"
}

# Undo use_python: the byte code and the link are ours, not the package manager's.
forget_python() {
    find "$APP" -depth -type d -name __pycache__ -exec rm -rf {} + 2>/dev/null || true
    rm -f "$APP/python3"
}

not_started_hint() {
    echo "mgh-reporter: installed, not started. Name your tool's stream in" \
         "/etc/mgh-reporter/config.toml ([hub] progress_update_stream), give the host AWS" \
         "credentials, then: runuser -u mgh-reporter -- mgh-reporter init &&" \
         "systemctl enable --now mgh-reporter"
}
