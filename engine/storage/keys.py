"""The one Redis key schema: namespace prefix, per-user hash tags and escaped ids.

Every key starts with ``<namespace>:``. All keys of one user share the hash tag ``{u:<id>}``,
so multi-key operations on a user (one pipeline, one Lua script, one ``DEL``) hit one slot
of a Redis Cluster. A model version's keys share ``{v:<version>}`` the same way.

Ids are escaped before they enter a key: every byte outside ``[A-Za-z0-9_.-]`` is
percent-encoded (``{`` -> ``%7B``, ``:`` -> ``%3A``, ``%`` -> ``%25``, control characters and
non-ASCII as UTF-8 bytes), so an escaped id never contains ``{``, ``}``, ``:`` or whitespace and
no user-supplied id can address another user's, version's or namespace's keys. Ids whose escaped
form is longer than :data:`MAX_ESCAPED` are replaced by ``#`` + a 256-bit BLAKE2b digest (``#``
never occurs in an escaped id, so hashed and escaped ids cannot collide).
"""

from __future__ import annotations

import hashlib
import re
import string

MAX_ESCAPED = 128
_SAFE = frozenset((string.ascii_letters + string.digits + "_.-").encode())
_NAMESPACE_OK = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_SUFFIX_OK = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def escape_id(raw: str) -> str:
    """Return ``raw`` made safe for a key segment (injective; see the module docstring)."""
    data = raw.encode("utf-8", "surrogatepass")
    out = "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in data)
    if len(out) > MAX_ESCAPED:
        return "#" + hashlib.blake2b(data, digest_size=32).hexdigest()
    return out


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is 1-64 characters of ``[A-Za-z0-9_.-]``, else raise."""
    if not _NAMESPACE_OK.fullmatch(namespace):
        raise ValueError(f"namespace {namespace!r}: use 1-64 characters of [A-Za-z0-9_.-]")
    return namespace


class Keys:
    """Build every Redis key and channel name of one namespace (tenant/app).

    ``kind`` and ``name`` arguments are code constants, checked against ``[A-Za-z0-9_.-]``;
    user ids and versions are data and always escaped.
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = check_namespace(namespace)
        self.prefix = f"{namespace}:"

    # --- per user: one hash tag, one slot ----------------------------------------------------

    @staticmethod
    def user_tag(user_id: str) -> str:
        """The hash tag ``{u:<escaped id>}`` shared by all keys of ``user_id``."""
        return "{u:" + escape_id(user_id) + "}"

    def user(self, user_id: str, kind: str) -> str:
        """Key of one per-user structure, e.g. ``user(uid, "history")`` ->
        ``rankly:{u:42}:history``. Kinds in use: history, times, seen, recs (events may add
        more)."""
        return f"{self.prefix}{self.user_tag(user_id)}:{_suffix(kind)}"

    # --- shared, not per user ----------------------------------------------------------------

    def shared(self, kind: str, name: str | None = None) -> str:
        """Key of a namespace-wide structure, e.g. ``shared("stream", "events")``; an optional
        ``name`` is data and escaped (``shared("rc", cache_key)`` for anonymous cache entries)."""
        key = f"{self.prefix}{_suffix(kind)}"
        return key if name is None else f"{key}:{escape_id(name)}"

    def experiment(self, key: str, phase: int, part: str, variant: str | None = None) -> str:
        """Key of one experiment structure; all keys of an experiment share ``{x:<key>}``.

        ``part`` is a code constant (assign, exposed, click, conversion); the experiment key
        and variant names are data and escaped.
        """
        tail = "" if variant is None else f":{escape_id(variant)}"
        return (f"{self.prefix}{{x:{escape_id(key)}}}:{int(phase)}:{_suffix(part)}{tail}")

    def channel(self, name: str) -> str:
        """A pub/sub channel of this namespace (``invalidate``, ``model``)."""
        return f"{self.prefix}chan:{_suffix(name)}"

    # --- model versions (feature store) ------------------------------------------------------

    def active_version(self) -> str:
        """The pointer to the active model version (a plain string value)."""
        return f"{self.prefix}model:active"

    def versions(self) -> str:
        """Sorted set of published versions, scored by publish time (unix seconds)."""
        return f"{self.prefix}model:versions"

    def version_tag(self, version: str) -> str:
        return "{v:" + escape_id(version) + "}"

    def version_manifest(self, version: str) -> str:
        """JSON description of one version (its artifact manifest plus the file list)."""
        return f"{self.prefix}model:{self.version_tag(version)}:manifest"

    def version_blob(self, version: str, file_no: int, chunk: int) -> str:
        """Chunk ``chunk`` of the ``file_no``-th artifact file of ``version``."""
        return f"{self.prefix}model:{self.version_tag(version)}:blob:{file_no}:{chunk}"


def _suffix(kind: str) -> str:
    if not _SUFFIX_OK.fullmatch(kind):
        raise ValueError(f"key kind {kind!r}: use 1-64 characters of [A-Za-z0-9_.-]")
    return kind
