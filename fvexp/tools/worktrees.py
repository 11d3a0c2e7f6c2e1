"""The commit a run was recorded at, checked out beside the current code as a cached git worktree.

`fvexp-reproduce --at-commit` re-runs a run with the code that recorded it. A git worktree of that
commit shares its repository's objects, takes a second to make, and leaves the repository's own
checkout, index and branches alone (it is detached). It is made from the repository that recorded
the run (its `git.root` tag) when that is on this machine and holds the commit, else from the
repository the current code lives in, else from `--repo`. A run recorded with uncommitted changes
gets a worktree of its own, named by the hash of its patch, with the patch applied. Both kinds are
kept under the cache folder and reused while they still hold exactly that code.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fvexp.app.environment import changes, git, patch_digest
from fvexp.credentials import redact
from fvexp.errors import FvexpError

HUNK = re.compile(r"@@ -(?P<old>\d+)(?:,(?P<old_count>\d+))? \+\d+(?:,(?P<new_count>\d+))? @@")


def holder(commit: str, repositories: Sequence[Path]) -> Path:
    """The first of `repositories` that holds `commit`, or an error that names where it looked."""
    for repository in repositories:
        if repository.is_dir() and git("cat-file", "-e", f"{commit}^{{commit}}", cwd=repository) is not None:
            return repository
    looked = ", ".join(f"{r}{'' if r.is_dir() else ' (not on this machine)'}"
                       for r in dict.fromkeys(repositories)) or "no repository"
    raise FvexpError(f"commit {commit} is in none of the repositories looked in ({looked}): fetch it into one "
                     "(git fetch), or name a clone that has it with --repo PATH")


def checkout(commit: str, patch: str, cache: Path, repositories: Sequence[Path]) -> Path:
    """A worktree of `commit` with `patch` applied (none when empty), made or reused under `cache`."""
    folder = (cache / (f"{commit}-{patch_digest(patch)[:12]}" if patch else commit)).resolve()
    if holds(folder, commit, patch):
        return folder
    repository = holder(commit, repositories)
    if folder.exists():  # a stale or edited copy: made again, never patched up
        git("worktree", "remove", "--force", str(folder), cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if git("worktree", "add", "--force", "--detach", str(folder), commit, cwd=repository) is None:
        raise FvexpError(f"cannot make a git worktree of {commit} from {repository} in {folder} "
                         f"(try: git -C {repository} worktree add --detach {folder} {commit})")
    if patch:
        with tempfile.NamedTemporaryFile("w", suffix=".patch") as file:
            file.write(unredacted(patch, folder))
            file.flush()
            if git("apply", "--binary", file.name, cwd=folder) is None:
                raise FvexpError(f"the recorded patch (environment/git-diff.patch) does not apply on {commit} in "
                                 f"{folder}; see: git -C {folder} apply --check PATCH")
    return folder


def unredacted(patch: str, folder: Path) -> str:
    """`patch` with the lines it shares with the commit's files (context, removed) taken back from them.

    A run records its patch with passwords in URIs replaced by *** (`fvexp.credentials.redact`), also
    in lines that only repeat the commit's own text, such as an example URI in the docs; `git apply`
    needs those exactly. Added lines cannot be restored: they are applied as recorded.
    """
    out: list[str] = []
    source: list[str] = []
    line_no = left = right = 0  # the old file's line, and the hunk's old and new lines still to come
    for line in patch.splitlines(keepends=True):
        if left or right:
            kind, text = line[:1], line[1:]
            if kind in (" ", "-"):
                original = source[line_no].rstrip("\n") if line_no < len(source) else None
                if original is not None and original != text.rstrip("\n") and redact(original) == text.rstrip("\n"):
                    line = kind + original + ("\n" if line.endswith("\n") else "")
                line_no, left = line_no + 1, left - 1
            right -= kind in (" ", "+")
        elif line.startswith("--- "):
            old = folder / line[4:].rstrip("\n").removeprefix("a/")
            source = old.read_text(errors="replace").splitlines() if line.startswith("--- a/") and old.is_file() else []
        elif hunk := HUNK.match(line):
            line_no = int(hunk["old"]) - 1 if int(hunk["old_count"] or 1) else 0
            left, right = int(hunk["old_count"] or 1), int(hunk["new_count"] or 1)
        out.append(line)
    return "".join(out)


def holds(folder: Path, commit: str, patch: str) -> bool:
    """Whether `folder` is a worktree at `commit` whose uncommitted changes are exactly `patch`."""
    if not (folder / ".git").exists() or git("rev-parse", "HEAD", cwd=folder) != commit:
        return False
    now = changes(folder)
    return now == patch or bool(now and patch and patch_digest(now) == patch_digest(patch))


def remove(folder: Path) -> None:
    """Unregister and delete a worktree made here (tests clean up after themselves with it)."""
    git("worktree", "remove", "--force", str(folder), cwd=folder)
    shutil.rmtree(folder, ignore_errors=True)
