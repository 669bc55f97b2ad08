#!/usr/bin/env bash
# echoview: set up a freshly flashed Jetson (JetPack 5.x or 6.x) as an echoview cart.
#
#   sudo ./install.sh [--deb echoview_X_arm64.deb] [--site FILE]
#
# Installs the package, the udev rule that names the grabber /dev/echoview-video and the ECG
# adapter /dev/echoview-ecg, the power profile, the model (and its TensorRT plan where the
# build has one), enables the service and runs `echoview doctor`. Every step looks before it
# acts, so running it again changes nothing on a healthy cart and repairs a damaged one
# (a deleted rule, a changed power setting, a missing model). The exit status is doctor's.
#
# Options:
#   --deb FILE    the package to install [default: the newest echoview_*.deb beside this
#                 script or in the current folder; none: keep the installed package]
#   --site FILE   site settings [default: ROOT/etc/echoview/site.conf, made from
#                 site.conf.example on the first run]
#   --root DIR    set up the file tree under DIR instead of / (image builds, tests): files
#                 are written there, host commands (dpkg, systemctl, udevadm, nvpmodel,
#                 build-engine, doctor) are only listed
#   --dry-run     change nothing; list what would change
#   -h, --help    this text
#
# board/jetson/README.md is the field engineer's guide.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=/
DRY_RUN=0
DEB=
SITE=
CHANGES=0

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
    --root) ROOT=${2:?--root needs a folder}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --deb) DEB=${2:?--deb needs a file}; shift 2 ;;
    --site) SITE=${2:?--site needs a file}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

# Absolute ROOT without a trailing slash ("" for /), so "$R/etc/..." is a path either way.
[ "$DRY_RUN" = 1 ] || mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)
R=${ROOT%/}
LIVE=1
[ -z "$R" ] || LIVE=0
SITE=${SITE:-$R/etc/echoview/site.conf}

say() { printf '%-9s %s\n' "$1" "$2"; }
die() { say "FAILED" "$*" >&2; exit 1; }

# Runs a command that changes the host; only listed with --root or --dry-run.
host() {
    if [ "$LIVE" = 0 ]; then
        say "skip" "(--root) $*"
    elif [ "$DRY_RUN" = 1 ]; then
        say "would" "run: $*"
    else
        "$@"
    fi
}

# put FILE MODE: writes stdin to FILE when its content or mode differ.
put() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$file" ] && cmp -s "$tmp" "$file" && [ "$(stat -c %a "$file")" = "$mode" ]; then
        say "ok" "$file"
        rm -f "$tmp"
        return 0
    fi
    CHANGES=$((CHANGES + 1))
    if [ "$DRY_RUN" = 1 ]; then
        say "would" "write $file"
        rm -f "$tmp"
        return 0
    fi
    mkdir -p "$(dirname "$file")"
    install -m "$mode" "$tmp" "$file"
    rm -f "$tmp"
    say "wrote" "$file"
}

# absent FILE: removes FILE if it exists (undoing a setting that was turned off).
absent() {
    [ -e "$1" ] || return 0
    CHANGES=$((CHANGES + 1))
    if [ "$DRY_RUN" = 1 ]; then say "would" "remove $1"; else rm -f "$1"; say "removed" "$1"; fi
}

# --- site settings -------------------------------------------------------------------------
VIDEO_MATCH= ECG_MATCH= NVPMODEL= JETSON_CLOCKS=no MODEL=/usr/share/echoview/models/demo
SERVICE=yes

read_site() {
    local line key value n=0
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        line=${line%%#*}
        line=$(printf '%s' "$line" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')
        [ -n "$line" ] || continue
        key=${line%%=*}
        value=${line#*=}
        [ "$key" != "$line" ] || die "$SITE line $n: expected KEY=value, got: $line"
        case "$key" in
        VIDEO_MATCH|ECG_MATCH|NVPMODEL|JETSON_CLOCKS|MODEL|SERVICE) printf -v "$key" '%s' "$value" ;;
        *) die "$SITE line $n: unknown key $key (see site.conf.example)" ;;
        esac
    done <"$1"
    case "$JETSON_CLOCKS" in yes|no) ;; *) die "$SITE: JETSON_CLOCKS must be yes or no" ;; esac
    case "$SERVICE" in yes|no) ;; *) die "$SITE: SERVICE must be yes or no" ;; esac
    [[ -z "$NVPMODEL" || "$NVPMODEL" =~ ^[0-9]+$ ]] || die "$SITE: NVPMODEL must be a mode number"
}

# udev_match VALUE: the udev match keys for a usb:VVVV:PPPP or serial:ID setting.
udev_match() {
    local v=$1
    if [[ "$v" =~ ^usb:([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$ ]]; then
        printf 'SUBSYSTEMS=="usb", ATTRS{idVendor}=="%s", ATTRS{idProduct}=="%s"' \
            "${BASH_REMATCH[1],,}" "${BASH_REMATCH[2],,}"
    elif [[ "$v" =~ ^serial:([A-Za-z0-9._:-]+)$ ]]; then
        printf 'ENV{ID_SERIAL}=="%s"' "${BASH_REMATCH[1]}"
    else
        die "$SITE: \"$v\" is neither usb:VVVV:PPPP nor serial:ID_SERIAL (see site.conf.example)"
    fi
}

step_site() {
    if [ ! -f "$SITE" ]; then
        [ -f "$SCRIPT_DIR/site.conf.example" ] || die "no $SITE and no site.conf.example beside this script"
        put "$SITE" 644 <"$SCRIPT_DIR/site.conf.example"
        say "note" "edit $SITE (device ids, power) and run this script again"
    fi
    [ -f "$SITE" ] && read_site "$SITE"
    return 0
}

# --- JetPack ---------------------------------------------------------------------------------
JETPACK=none
step_jetpack() {
    local release=$R/etc/nv_tegra_release
    if [ ! -f "$release" ]; then
        say "note" "not a Jetson (no $release): power settings are skipped"
        return 0
    fi
    case "$(head -n 1 "$release")" in
    *R35*) JETPACK=5 ;;
    *R36*) JETPACK=6 ;;
    *) JETPACK=unknown ;;
    esac
    say "ok" "JetPack $JETPACK ($(head -n 1 "$release" | cut -c1-40))"
}

# --- package ---------------------------------------------------------------------------------
step_package() {
    if [ -z "$DEB" ]; then
        DEB=$(ls -1 "$SCRIPT_DIR"/echoview_*.deb ./echoview_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
    fi
    if [ -z "$DEB" ]; then
        if [ -x "$R/usr/bin/echoview" ]; then
            say "ok" "package: keeping the installed echoview (no .deb given)"
            return 0
        fi
        if [ "$LIVE" = 0 ]; then
            say "skip" "package: no .deb given and none in $R"
            return 0
        fi
        die "echoview is not installed and no .deb was found; pass --deb FILE"
    fi
    [ -f "$DEB" ] || die "package $DEB does not exist"
    local want have
    want=$(dpkg-deb -f "$DEB" Version)
    if [ "$LIVE" = 0 ]; then
        # A tree, not a system: unpack the files (conffiles included) over it.
        if [ -f "$R/usr/share/echoview/.package-version" ] &&
            [ "$(cat "$R/usr/share/echoview/.package-version")" = "$want" ]; then
            say "ok" "package $want unpacked in $R"
            return 0
        fi
        CHANGES=$((CHANGES + 1))
        if [ "$DRY_RUN" = 1 ]; then say "would" "unpack $DEB into $R"; return 0; fi
        dpkg-deb -x "$DEB" "$R/"
        printf '%s\n' "$want" >"$R/usr/share/echoview/.package-version"
        say "unpacked" "$DEB into $R"
        return 0
    fi
    have=$(dpkg-query -W -f='${Version}' echoview 2>/dev/null || true)
    # `dpkg -V` lists installed files that were changed or deleted (conffile edits are the
    # site's and are not repaired).
    if [ "$have" = "$want" ] && [ -z "$(dpkg -V echoview 2>/dev/null | grep -v ' c /etc/' || true)" ]; then
        say "ok" "package echoview $have installed and intact"
        return 0
    fi
    CHANGES=$((CHANGES + 1))
    host apt-get install -y --reinstall --allow-downgrades "$(realpath "$DEB")"
    say "done" "package echoview $want (was: ${have:-not installed})"
}

# --- udev ------------------------------------------------------------------------------------
step_udev() {
    local rules=$R/etc/udev/rules.d/65-echoview-site.rules text video= ecg=
    # Matches first, in this shell, so a bad setting stops the script (set -e).
    [ -z "$VIDEO_MATCH" ] || video=$(udev_match "$VIDEO_MATCH")
    [ -z "$ECG_MATCH" ] || ecg=$(udev_match "$ECG_MATCH")
    text="# Written by echoview's board/jetson/install.sh from $SITE; edit that and rerun.
# Marks the cart's devices; /lib/udev/rules.d/70-echoview.rules names them."
    [ -z "$video" ] || text+=$'\n'"SUBSYSTEM==\"video4linux\", $video, ENV{ECHOVIEW_ROLE}=\"video\""
    [ -z "$ecg" ] || text+=$'\n'"SUBSYSTEM==\"tty\", $ecg, ENV{ECHOVIEW_ROLE}=\"ecg\""
    # Not a pipe: put must run in this shell to count the change.
    put "$rules" 644 <<<"$text"
    host udevadm control --reload-rules
    host udevadm trigger --subsystem-match=video4linux --subsystem-match=tty
    host udevadm settle --timeout=10
    if [ "$LIVE" = 1 ] && [ "$DRY_RUN" = 0 ]; then
        local dev
        for dev in /dev/echoview-video /dev/echoview-ecg; do
            if [ -e "$dev" ]; then say "ok" "$dev -> $(readlink -f "$dev")"; else say "missing" "$dev (doctor says why)"; fi
        done
    fi
}

# --- power -----------------------------------------------------------------------------------
step_power() {
    local unit=$R/etc/systemd/system/echoview-clocks.service
    if [ "$JETPACK" = none ]; then
        return 0
    fi
    if [ -n "$NVPMODEL" ] && [ "$LIVE" = 0 ]; then
        # A tree has no power mode to read or set.
        host nvpmodel -m "$NVPMODEL"
    elif [ -n "$NVPMODEL" ]; then
        local current=
        if command -v nvpmodel >/dev/null; then
            current=$(nvpmodel -q 2>/dev/null | tail -n 1 | tr -dc '0-9')
        fi
        if [ "$current" = "$NVPMODEL" ]; then
            say "ok" "power mode $NVPMODEL"
        else
            CHANGES=$((CHANGES + 1))
            # Some modes ask to reboot; answer no here and say so below.
            host sh -c "echo no | nvpmodel -m $NVPMODEL"
            say "note" "power mode set to $NVPMODEL (was ${current:-unknown}); if nvpmodel asked for a reboot, reboot"
        fi
    fi
    if [ "$JETSON_CLOCKS" = yes ]; then
        put "$unit" 644 <<'UNIT'
# Written by echoview's board/jetson/install.sh (JETSON_CLOCKS=yes in site.conf).
[Unit]
Description=echoview: lock the Jetson clocks at the power mode's maximum
After=nvpmodel.service
Before=echoview.service

[Service]
Type=oneshot
ExecStart=/usr/bin/jetson_clocks
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
UNIT
        host systemctl daemon-reload
        host systemctl enable --now echoview-clocks.service
    else
        if [ -e "$unit" ]; then
            host systemctl disable --now echoview-clocks.service
        fi
        absent "$unit"
    fi
}

# --- model and TensorRT plan -----------------------------------------------------------------
# The echoview to run: the unpacked one in a tree, else the installed one ($ECHOVIEW_BIN
# overrides, for tests).
echoview_bin() {
    if [ -n "${ECHOVIEW_BIN:-}" ]; then echo "$ECHOVIEW_BIN"
    elif [ -x "$R/usr/bin/echoview" ] && [ "$LIVE" = 1 ]; then echo "$R/usr/bin/echoview"
    elif command -v echoview >/dev/null; then command -v echoview
    fi
}

step_model() {
    local store=$R/var/lib/echoview/models bin model
    bin=$(echoview_bin)
    if [ -e "$store/active/manifest.toml" ]; then
        say "ok" "model: $(readlink "$store/active" || echo '?') is active"
    else
        model=$MODEL
        # In a tree the bundle may be the one just unpacked into it.
        [ "$LIVE" = 1 ] || [ ! -d "$R$MODEL" ] || model=$R$MODEL
        [ -n "$bin" ] || die "no echoview binary to install the model with"
        CHANGES=$((CHANGES + 1))
        if [ "$DRY_RUN" = 1 ]; then
            say "would" "run: echoview model install $model --root $ROOT --no-restart"
        else
            "$bin" model install "$model" --root "$ROOT" --no-restart
        fi
    fi
    # The TensorRT plan is built per GPU and TensorRT version by board/build-engine.sh (from
    # the TensorRT work); without it, or in a build without TensorRT, the cart runs tract.
    local build=$SCRIPT_DIR/../build-engine.sh
    if [ -x "$build" ]; then
        host "$build" "$store/active"
    else
        say "skip" "TensorRT plan: board/build-engine.sh is not installed; inference runs on tract (CPU)"
    fi
}

# --- service and doctor ----------------------------------------------------------------------
step_service() {
    if [ "$SERVICE" = yes ]; then
        host systemctl daemon-reload
        host systemctl enable echoview.service
        if [ "$LIVE" = 1 ] && [ "$DRY_RUN" = 0 ]; then
            systemctl restart echoview.service ||
                say "warning" "echoview.service did not start: journalctl -u echoview -n 50 says why"
        fi
    else
        host systemctl disable --now echoview.service
    fi
}

step_doctor() {
    local bin
    bin=$(echoview_bin)
    if [ "$LIVE" = 0 ] || [ "$DRY_RUN" = 1 ]; then
        say "skip" "doctor: run \`echoview doctor\` on the cart"
        return 0
    fi
    echo
    "$bin" doctor --config /etc/echoview/echoview.toml
}

main() {
    say "echoview" "install into ${ROOT}$([ "$DRY_RUN" = 1 ] && echo ' (dry run)')"
    step_site
    step_jetpack
    step_package
    step_udev
    step_power
    step_model
    step_service
    say "summary" "$CHANGES change(s)$([ "$DRY_RUN" = 1 ] && echo ' would be made')"
    step_doctor
}

main
