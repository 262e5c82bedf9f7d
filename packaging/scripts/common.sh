# Shared by every maintainer script of the deb and the rpm (build.py puts it at the top of
# each). POSIX sh: it runs on a bare Debian minbase (no systemd, no adduser) as well as on a
# booted RHEL. The sysusers entry below is systemd/mgh-reporter.sysusers.conf (build.py).
set -e
APP=/usr/lib/mgh-reporter
UNIT=mgh-reporter.service
STATE_DIR=/var/lib/mgh-reporter  # the shared outbox directory
HOME_DIR=/var/lib/mgh-reporter-home  # the service user's private home

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
        --home-dir "$HOME_DIR" --no-create-home --shell /usr/sbin/nologin \
        --comment "mgh-reporter daemon" mgh-reporter
}

# Before 0.3 the user's home was the shared outbox directory, where any tool user in the group
# could plant ~/.aws/config (a credential_process runs as the service): move the home to its
# private directory, and with it an .aws directory only the service user or root could have
# written (anything else is left where it is, and said).
# usermod refuses while a process of the user runs: a running service is stopped for it and
# started again (HOME_MOVED_STARTED=1 then: the upgrade's restart is done).
HOME_MOVED_STARTED=
move_home() {
    home=$(getent passwd mgh-reporter | cut -d: -f6)
    [ "$home" = "$STATE_DIR" ] || return 0
    was_running=
    if booted && systemctl is-active --quiet "$UNIT"; then
        systemctl stop "$UNIT" || true
        was_running=1
    fi
    if usermod -d "$HOME_DIR" mgh-reporter; then
        echo "mgh-reporter: the service user's home is now $HOME_DIR (not the shared $STATE_DIR)"
    else
        echo "mgh-reporter: could not move the service user's home out of $STATE_DIR (a process" \
             "of mgh-reporter runs?): stop it, then: usermod -d $HOME_DIR mgh-reporter" >&2
    fi
    if [ -d "$STATE_DIR/.aws" ] && [ ! -L "$STATE_DIR/.aws" ] && [ ! -e "$HOME_DIR/.aws" ]; then
        strangers=$(find "$STATE_DIR/.aws" ! -user mgh-reporter ! -user root 2>/dev/null | head -1)
        if [ -z "$strangers" ]; then
            mv "$STATE_DIR/.aws" "$HOME_DIR/.aws"
            echo "mgh-reporter: moved $STATE_DIR/.aws to $HOME_DIR/.aws"
        else
            echo "mgh-reporter: NOT moved $STATE_DIR/.aws: $strangers belongs to another user;" \
                 "check it, then move what is yours to $HOME_DIR/.aws by hand" >&2
        fi
    fi
    if [ -n "$was_running" ]; then
        systemctl daemon-reload || true
        systemctl start "$UNIT" || true
        HOME_MOVED_STARTED=1
    fi
}

# The shared outbox directory (setgid, group-writable): systemd-tmpfiles where it exists (the
# package's tmpfiles entry, as at every boot), else the same mode by hand, only when missing.
make_state_dir() {
    if command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create /usr/lib/tmpfiles.d/mgh-reporter.conf
    else
        [ -d "$STATE_DIR" ] || install -d -m 3770 -o mgh-reporter -g mgh-reporter "$STATE_DIR"
        chmod +t "$STATE_DIR"  # an upgrade from before 0.3: sticky now
        [ -d "$HOME_DIR" ] || install -d -m 0700 -o mgh-reporter -g mgh-reporter "$HOME_DIR"
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
