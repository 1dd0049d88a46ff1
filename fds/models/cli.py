"""``fds models list|show|promote|rollback``: look after the model registry."""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any

from fds.cli import file_path, registry_folder
from fds.errors import ArtifactError, ConfigError
from fds.logs import say
from fds.models.spec import spec_differs

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``fds models ...`` to the CLI."""
    p = subparsers.add_parser("models", help="model registry: list, show, promote, rollback")
    p.add_argument(
        "--registry", type=registry_folder, default=None,
        help="registry folder (default: $FDS_REGISTRY, else --config's registry, else "
        "models/registry)",
    )  # fmt: skip
    p.add_argument(
        "--config", type=file_path("settings file"), default=None,
        help="the deployment's settings file, for its registry (as fds run and fds train)",
    )  # fmt: skip
    # (without a command: "give a command: list, ...", as every command says it, fds.cli)
    sub = p.add_subparsers(dest="models_cmd", metavar="COMMAND", required=True)
    # --registry is also accepted after the command (`fds models list --registry DIR`)
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument(
        "--registry", type=registry_folder, default=argparse.SUPPRESS, help="registry folder"
    )
    after.add_argument(
        "--config", type=file_path("settings file"), default=argparse.SUPPRESS,
        help="settings file",
    )  # fmt: skip
    sub.add_parser("list", parents=[after], help="versions, newest last, with status").set_defaults(
        func=_list
    )
    s = sub.add_parser(
        "show", parents=[after],
        help="one version's manifest entry (default: the champion, else the newest)",
    )  # fmt: skip
    s.add_argument("version", nargs="?", type=_version)
    s.add_argument(
        "--verify", action="store_true",
        help="also verify sha256/HMAC, load it and run the scorers' canary check on it",
    )  # fmt: skip
    s.set_defaults(func=_show)
    pr = sub.add_parser(
        "promote", parents=[after], help="make a version the champion (verified first)"
    )
    pr.add_argument("version", type=_version)
    pr.add_argument("--force", action="store_true", help="promote a rejected version anyway")
    pr.set_defaults(func=_promote)
    sub.add_parser(
        "rollback", parents=[after], help="return to the previous champion"
    ).set_defaults(func=_rollback)


def _registry(args: argparse.Namespace) -> Any:
    """The registry of ``--registry``, else of the settings (``--config``'s ``registry``,
    ``FDS_REGISTRY``) as fds run and fds train read them, else ``models/registry`` (the
    settings were not read: an operator's rollback in a pod acted on ./models/registry, a QA
    pass)."""
    from fds.models.registry import DEFAULT_REGISTRY, Registry

    if args.registry is None:
        from fds.streams.settings import registry_setting

        args.registry = registry_setting(args.config) or DEFAULT_REGISTRY
    return Registry(args.registry, create=False)


def _version(text: str) -> str:
    """argparse type: a version id; a bare number, or one after a ``v`` (``v3``: it was
    "unknown", a README walk), is the version of that sequence number (``3`` -> ``v000003``,
    as `fds models list` shows them)."""
    digits = text[1:] if text[:1] in ("v", "V") else text
    return f"v{int(digits):06d}" if digits.isdigit() else text


def _fail(args: argparse.Namespace, e: Exception | str, code: int) -> int:
    """``error:`` for a usage error (2), ``failed:`` otherwise (1), as every command says."""
    say(f"{args.prog}: {'error' if code == 2 else 'failed'}: {e}")
    return code


def _list(args: argparse.Namespace) -> int:
    try:
        reg = _registry(args)
        entries = reg.versions()
    except ConfigError as e:
        return _fail(args, e, 2)
    if not entries:
        print(f"no versions in {args.registry} (`fds train` publishes them there)")
        return 0
    champ = reg.champion()
    print(f"{'version':10} {'status':10} {'spec':10} {'labels':>8} {'parent':10} created_at")
    for ent in entries:
        star = "*" if ent["version"] == champ else " "
        print(
            f"{ent['version']:10} {ent['status']:10} {ent['spec'].get('name', '?'):10} "
            f"{ent['labels_learned']:>8} {ent['parent'] or '-':10} {ent['created_at']}{star}"
        )
    try:  # (scorers serve an earlier version then, and the table said nothing: a QA pass)
        if champ is not None:
            reg.verify_file(champ, reg.entry(champ))
    except ArtifactError as e:
        if not _checkable_elsewhere(e, reg, champ):
            return _fail(args, f"the champion fails its check: {_failing(e)}", 1)
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        reg = _registry(args)
        version = args.version or reg.champion()
        if version is None:
            version = reg.latest()
            if version is None:
                return _fail(args, f"no versions in {args.registry}", 1)
            say(f"{args.prog}: no champion yet: the newest version, {version}")
        entry = reg.entry(version)
        unserved = None
        if args.verify:
            unserved = _canary_failure(reg.load(version), entry)
            entry = {**entry, "verified": True, "canary": unserved or "passed"}
    except ConfigError as e:
        return _fail(args, e, 2)
    except ArtifactError as e:
        return _fail(args, e, 1)
    print(json.dumps(entry, indent=2, sort_keys=True))
    if unserved is not None:  # (it verified, yet no scorer serves it)
        return _fail(
            args, f"{version} fails the scorers' canary check ({unserved}): they do not serve it", 1
        )
    return 0


def _promote(args: argparse.Namespace) -> int:
    already = False
    try:
        reg = _registry(args)
        before = reg.entry(args.version)
        already = reg.champion() == before["version"]
        if before["status"] == "rejected" and not args.force and not already:
            why = before.get("rejected_because", "")
            raise ConfigError(
                f"{args.version} was rejected ({why}): promote it anyway with --force"
            )
        model = reg.load(args.version)  # never promote what does not verify (the champion
        unserved = _canary_failure(model, before)  # is verified too: its artifact may have rotted)
        version = before["version"]
        if unserved is not None and not (args.force or already):  # (it was promoted, exit 0,
            raise ArtifactError(  # with a warning that no scorer would serve it: a QA pass)
                f"it fails the canary check scorers make ({unserved}), so none would serve "
                "it: promote it anyway with --force"
            )
        champ = reg.champion()
        other = None
        if champ is not None and not already:  # (said to pick it up, refused: a QA pass)
            other = spec_differs(before.get("spec"), reg.entry(champ).get("spec"), serving=True)
        if already and unserved is None:  # (it said "champion is now ...": a README walk)
            print(f"{version} is already the champion (its artifact verifies): nothing changed")
            return 0
        if not already:  # (rejected meanwhile, while it was loaded and checked: refused but
            # with --force, as before it: a scorer's verdict was overridden, a review)
            reason = "manual (fds models promote)"
            reg.promote(version, reason=reason, unless_rejected=not args.force)
    except ConfigError as e:
        return _fail(args, e, 2)
    except ArtifactError as e:
        if already and _checkable_elsewhere(e, reg, before["version"]):
            print(
                f"{before['version']} is already the champion: nothing changed (not verified "
                f"here: {e})"
            )
            return 0
        if already:  # (said as `list` says it: a rollback told where there was none to
            return _fail(  # roll back to, and to a wrong key's machine, a QA pass)
                args,
                f"{before['version']} is the champion, but it fails its check: {_failing(e)}",
                1,
            )
        return _fail(args, ArtifactError(f"{args.version} not promoted: {e}"), 1)
    if unserved is None and other is not None:
        print(f"champion is now {version}")
        say(
            f"{args.prog}: warning: {version} was made by spec {other} ({champ}, the champion "
            f"before): running scorers of that spec do not serve it and keep their own model; "
            f"serve it with the spec it was made by ({_spec_option(before['spec'])}), or "
            "`fds models rollback`"
        )
        return 0
    if unserved is None:
        # (scorers fed by a models topic: through this registry's trainer, said as such: it
        # claimed they all picked it up, which none of them did then, a QA pass)
        print(
            f"champion is now {version}; running scorers pick it up on their next poll "
            "(those fed by a models topic once this registry's fds train announces it)"
        )
        return 0
    # (promoted with --force, such a version was refused by every scorer while this said they
    # picked it up: a QA pass)
    print(f"{version} is already the champion" if already else f"champion is now {version}")
    say(
        f"{args.prog}: warning: running scorers will not serve {version} while it "
        f"fails their canary check ({unserved}): they keep serving an earlier champion; "
        "`fds models rollback` makes the registry's champion the previous one again"
    )
    return 0


def _spec_option(made: dict[str, Any]) -> str:
    """How to serve a version made by the spec ``made`` (a registry entry's): a shipped spec
    by its name; another by its file, which only its owner knows (a custom spec's name was
    given as --model, which finds shipped names only: a review)."""
    from fds.models.spec import SPEC_DIR, load_spec

    name = str(made.get("name"))
    shipped = SPEC_DIR / f"{name}.yaml"
    with contextlib.suppress(ConfigError):  # (a shipped name whose pipeline was changed: it
        # named the spec both versions share, which told nothing, a review)
        if shipped.is_file() and load_spec(shipped).to_dict().get("pipeline") == made.get(
            "pipeline"
        ):
            return f"fds run --model {name}"
    return (
        f"fds run --model with the file of spec {name!r} that made it (`fds models show` has "
        "its pipeline)"
    )


def _failing(e: ArtifactError) -> str:
    """What a champion failing its check means, and what to do."""
    return (
        f"{e}; scorers that check it the same way (the same FDS_MODEL_KEY) serve an earlier "
        "version or the rules alone: `fds models promote` a good one or `fds models rollback`"
    )


def _checkable_elsewhere(e: ArtifactError, reg: Any, version: str) -> bool:
    """Is ``e`` this machine's only, not the artifact's? A key not set here is this machine's,
    as it is for the scorers; a file missing is not, nor a signature that fails the key set
    here, as the scorers' would (a review)."""
    return e.local and reg.key is None and reg.artifact(version).is_file()


def _canary_failure(model: Any, entry: dict[str, Any]) -> str | None:
    """Why scorers would refuse to serve ``model``: its canary failing here (on the empty
    input a scorer without recent inputs checks), or the canary failure it was rejected for
    (on a scorer's recent inputs, which this command does not have); ``None`` otherwise."""
    from fds.models.fused import serving
    from fds.models.scorer import canary

    try:
        canary(serving(model), [{}])
        why = str(entry.get("rejected_because") or "") if entry["status"] == "rejected" else ""
    except ArtifactError as e:
        why = str(e)
    return why.removeprefix("canary: ") if why.startswith("canary:") else None


def _rollback(args: argparse.Namespace) -> int:
    try:
        reg = _registry(args)
        reg.manifest()  # (one not written by fds: exit 2, as in list, show and promote)
    except ConfigError as e:
        return _fail(args, e, 2)
    before = reg.champion()
    try:
        entry = reg.rollback(reason="manual (fds models rollback)")
    except ConfigError as e:  # nothing to roll back to
        return _fail(args, f"{e}: `fds models promote VERSION` makes one the champion (`fds "
                     "models list` shows them)", 1)  # fmt: skip
    except ArtifactError as e:  # the previous champion does not verify: nothing changed
        return _fail(args, ArtifactError(
            f"not rolled back: {e}; `fds models promote VERSION` makes another verified one the "
            "champion (`fds models list` shows them)"
        ), 1)  # fmt: skip
    print(f"rolled back: champion is now {entry['version']}")
    other = None
    if before is not None:  # (as promote says it: scorers of the other spec kept serving the
        with contextlib.suppress(ConfigError):  # version rolled back, without a word, a
            was = reg.entry(before).get("spec")  # review; dropped meanwhile: unsaid)
            other = spec_differs(entry.get("spec"), was, serving=True)
    if other is not None:
        say(
            f"{args.prog}: warning: {entry['version']} was made by spec {other} ({before}, the "
            f"champion before): running scorers of that spec do not serve it and keep serving "
            f"{before}; serve it with the spec it was made by ({_spec_option(entry['spec'])})"
        )
    return 0
