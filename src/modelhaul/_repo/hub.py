"""Origin hubs: where a model comes from when no mirror has it. Each hub is reached through
its own client library — Hugging Face through ``huggingface_hub``, ModelScope through
``modelscope`` — and each library's errors are translated here, at the boundary.

Settings are passed to the libraries explicitly (endpoint, token) at each call, never
through their import-time globals, so ``HF_ENDPOINT`` set after import is honoured.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._core.errors import (
    ConfigError,
    HubError,
    MissingExtra,
    ModelhaulError,
    NoSuchModel,
    NoSuchRevision,
    redact,
)
from .._core.settings import Resolver, Setting, as_text, as_url
from .._core.uri import safe_join, safe_relpath
from .manifest import RepoId

__all__ = [
    "HF_ENDPOINT",
    "HF_TOKEN",
    "HUB_SETTINGS",
    "MS_ENDPOINT",
    "MS_TOKEN",
    "HubFile",
    "HubRevision",
    "HuggingFaceHub",
    "ModelScopeHub",
    "OriginHub",
    "make_hub",
]

log = logging.getLogger("modelhaul.hub")

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
MS_DEFAULT_ENDPOINT = "https://modelscope.cn"
# What a MissingExtra for a hub says besides installing it: pulls try other sources too.
# modelscope.cn answers at most this many entries to one listing, silently
# (REPO_FILES_TRUNCATION_LIMIT in its SDK).
_MS_LISTING_CAP = 3000
_LEAVE_OUT = "leave that source out (pull --origin, or origins=[...])"

# The hubs' own environment variables, the ones their client libraries read too; no config
# file holds them.
HF_ENDPOINT = Setting(
    name="hf_endpoint", parse=as_url, default=HF_DEFAULT_ENDPOINT, env=("HF_ENDPOINT",), key=None
)
HF_TOKEN: Setting[str | None] = Setting(
    name="hf_token", parse=as_text, default=None, env=("HF_TOKEN",), key=None
)


def as_ms_endpoint(value: Any) -> str:
    """A ModelScope endpoint: a URL, or (as ``MODELSCOPE_DOMAIN`` is often written) a bare
    host, which means https."""
    text = as_text(value).strip().rstrip("/")
    return text if text.startswith(("http://", "https://")) else f"https://{text}"


# The SDK's own precedence: MODELSCOPE_ENDPOINT, then the deprecated MODELSCOPE_DOMAIN.
MS_ENDPOINT = Setting(
    name="modelscope_endpoint",
    parse=as_ms_endpoint,
    default=MS_DEFAULT_ENDPOINT,
    env=("MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN"),
    key=None,
)
MS_TOKEN: Setting[str | None] = Setting(
    name="modelscope_token", parse=as_text, default=None, env=("MODELSCOPE_API_TOKEN",), key=None
)
HUB_SETTINGS = (HF_ENDPOINT, HF_TOKEN, MS_ENDPOINT, MS_TOKEN)


@dataclass(frozen=True)
class HubFile:
    """One file of a hub revision, with the checksums the hub vouches for."""

    path: str
    size: int | None
    sha256: str | None = None
    git_sha1: str | None = None


@dataclass(frozen=True)
class HubRevision:
    """A revision as a hub resolved it: the commit and its files."""

    hub: str
    repo: RepoId
    commit: str
    files: tuple[HubFile, ...]


class OriginHub(abc.ABC):
    """A model hub that modelhaul can fetch from."""

    name: str = ""

    @abc.abstractmethod
    def describe(self) -> str:
        """The hub and its endpoint, for messages (no token)."""

    @abc.abstractmethod
    def resolve(self, repo: RepoId, revision: str) -> HubRevision:
        """The commit and files of ``revision`` (a branch, tag or commit).

        Raises:
            NoSuchModel, NoSuchRevision: the hub does not have it.
            HubError: the hub failed or refused.
        """

    @abc.abstractmethod
    def fetch(self, repo: RepoId, commit: str, path: str, folder: Path) -> Path:
        """Download one file of ``commit`` into ``folder``; return where it is.

        Raises:
            HubError: the hub failed or refused.
        """


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file (what a hub reports for files not in LFS)."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\x00" % path.stat().st_size)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class HuggingFaceHub(OriginHub):
    """The Hugging Face Hub (or any server speaking its API, e.g. a local mirror).

    Args:
        endpoint: the hub's URL; ``HF_ENDPOINT`` or https://huggingface.co by default.
        token: an access token; by default huggingface_hub's own (``HF_TOKEN``, or the
            file ``hf auth login`` writes).
    """

    name = "hf"

    def __init__(self, endpoint: str | None = None, token: str | None = None) -> None:
        self.endpoint = (endpoint or HF_DEFAULT_ENDPOINT).rstrip("/")
        self._token = token

    def describe(self) -> str:
        return f"Hugging Face at {self.endpoint}"

    def _api(self) -> Any:
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise MissingExtra(
                "huggingface_hub", "pulling from Hugging Face", alternative=_LEAVE_OUT
            ) from None
        return HfApi(endpoint=self.endpoint, token=self._token, library_name="modelhaul")

    def _translate(self, exc: BaseException, repo: RepoId, revision: str) -> ModelhaulError:
        from huggingface_hub import errors as hf_errors

        status = None
        response = getattr(exc, "response", None)
        if response is not None:
            status = getattr(response, "status_code", None)
        if isinstance(exc, hf_errors.GatedRepoError):
            return HubError(
                f"{repo} on {self.describe()} is gated: access was refused",
                hub=self.describe(),
                status=status,
                hint="accept the model's terms on its page, and set HF_TOKEN to a token of "
                "that account",
            )
        if isinstance(exc, hf_errors.RepositoryNotFoundError):
            return NoSuchModel(str(repo), [f"{self.describe()}: no such model (or no access)"])
        if isinstance(exc, hf_errors.RevisionNotFoundError):
            return NoSuchRevision(
                str(repo), revision, [f"{self.describe()}: no revision {revision!r}"]
            )
        if isinstance(exc, hf_errors.HfHubHTTPError):
            if status in (401, 403):
                hint = "set HF_TOKEN to a token that may read this model"
            else:
                hint = "the hub failed; run the same command again later"
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return HubError(
                f"{self.describe()} answered {status} for {repo}: {first}",
                hub=self.describe(),
                status=status,
                hint=hint,
            )
        return HubError(
            f"cannot reach {self.describe()} for {repo}: {type(exc).__name__}: {exc}",
            hub=self.describe(),
            hint="check the network and HF_ENDPOINT, or use a mirror (--mirror)",
        )

    def resolve(self, repo: RepoId, revision: str) -> HubRevision:
        api = self._api()
        try:
            info = api.model_info(str(repo), revision=revision, files_metadata=True)
        except ModelhaulError:
            raise
        except Exception as exc:
            raise self._translate(exc, repo, revision) from exc
        files = []
        for s in info.siblings or []:
            lfs = s.lfs
            files.append(
                HubFile(
                    safe_relpath(s.rfilename),
                    s.size,
                    getattr(lfs, "sha256", None) if lfs is not None else None,
                    s.blob_id if lfs is None else None,
                )
            )
        if not info.sha:
            raise HubError(
                f"{self.describe()} did not say which commit {repo}@{revision} is",
                hub=self.describe(),
                hint="the endpoint may not be a Hugging Face hub; check HF_ENDPOINT",
            )
        return HubRevision(self.name, repo, info.sha, tuple(sorted(files, key=lambda f: f.path)))

    def fetch(self, repo: RepoId, commit: str, path: str, folder: Path) -> Path:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:
            raise MissingExtra(
                "huggingface_hub", "pulling from Hugging Face", alternative=_LEAVE_OUT
            ) from None
        try:
            got = hf_hub_download(
                str(repo),
                path,
                revision=commit,
                local_dir=folder,
                endpoint=self.endpoint,
                token=self._token,
                library_name="modelhaul",
            )
        except Exception as exc:
            raise self._translate(exc, repo, commit) from exc
        return Path(got)


class ModelScopeHub(OriginHub):
    """ModelScope, through the ``modelscope`` package (an optional dependency) for the
    downloads; the revision is resolved here, from the file listing the SDK reads too.

    The SDK's listing (``HubApi.get_model_files``) drops the commit and the files' SHA-256,
    so :meth:`resolve` reads ``/api/v1/models/{id}/repo/files`` itself: ``Files`` (each with
    ``Sha256``) and ``LatestCommitter.Id``, the commit the revision is at. Files are then
    fetched at that commit, never at the ref name, so a ref that moves mid-pull cannot mix
    two revisions.

    Args:
        endpoint: the hub's URL (``MODELSCOPE_ENDPOINT``, or the deprecated
            ``MODELSCOPE_DOMAIN``); https://modelscope.cn by default.
        token: an access token (``MODELSCOPE_API_TOKEN``).
    """

    name = "modelscope"

    def __init__(self, endpoint: str | None = None, token: str | None = None) -> None:
        self.endpoint = as_ms_endpoint(endpoint or MS_DEFAULT_ENDPOINT)
        self._token = token

    def describe(self) -> str:
        return f"ModelScope at {self.endpoint}"

    @staticmethod
    def _need_sdk() -> None:
        try:
            import modelscope  # noqa: F401
        except ImportError:
            raise MissingExtra(
                "modelscope", "pulling from ModelScope", "modelscope", alternative=_LEAVE_OUT
            ) from None

    def _get_json(self, repo: RepoId, revision: str, route: str, query: dict[str, str]) -> Any:
        """``GET /api/v1/models/{repo}{route}``; the ``Data`` of the hub's answer."""
        import urllib.error
        import urllib.request
        from urllib.parse import quote, urlencode

        url = f"{self.endpoint}/api/v1/models/{quote(str(repo))}{route}?{urlencode(query)}"
        headers = {"Accept": "application/json", "User-Agent": "modelhaul"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
            headers["Cookie"] = f"m_session_id={self._token}"
        status: int | None
        try:
            # The endpoint is http(s) by construction (as_ms_endpoint).
            request = urllib.request.Request(url, headers=headers)  # noqa: S310
            with urllib.request.urlopen(request, timeout=60) as r:  # noqa: S310
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (OSError, ValueError) as exc:
            raise HubError(
                f"cannot reach {self.describe()} for {repo}: {type(exc).__name__}: {exc}",
                hub=self.describe(),
                hint="check the network and MODELSCOPE_ENDPOINT, or use a mirror (--mirror)",
            ) from exc
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise HubError(
                f"{self.describe()} answered {status} for {repo} with no JSON",
                hub=self.describe(),
                status=status,
                hint="the endpoint may not be a ModelScope hub; check MODELSCOPE_ENDPOINT",
            )
        message = redact(str(body.get("Message") or ""), [self._token])
        if status == 200 and body.get("Success", True) is not False:
            return body.get("Data")
        if status in (401, 403):
            raise HubError(
                f"{self.describe()} answered {status} for {repo}: {message}",
                hub=self.describe(),
                status=status,
                hint="set MODELSCOPE_API_TOKEN to a token that may read this model",
            )
        if status == 404 or "not exist" in message.lower():
            if "revision" in message.lower():
                raise NoSuchRevision(
                    str(repo), revision, [f"{self.describe()}: no revision {revision!r}"]
                )
            raise NoSuchModel(str(repo), [f"{self.describe()}: no such model (or no access)"])
        raise HubError(
            f"{self.describe()} answered {status} for {repo}: {message}",
            hub=self.describe(),
            status=status,
            hint="the hub failed; run the same command again later",
        )

    def resolve(self, repo: RepoId, revision: str) -> HubRevision:
        self._need_sdk()
        data = self._get_json(
            repo, revision, "/repo/files", {"Revision": revision, "Recursive": "True"}
        )
        committer = data.get("LatestCommitter") if isinstance(data, dict) else None
        commit = committer.get("Id") if isinstance(committer, dict) else None
        if not isinstance(commit, str) or not commit:
            raise HubError(
                f"{self.describe()} did not say which commit {repo}@{revision} is",
                hub=self.describe(),
                hint="the endpoint may not be a ModelScope hub; check MODELSCOPE_ENDPOINT",
            )
        listed = data.get("Files") or []
        if len(listed) >= _MS_LISTING_CAP:
            listed = self._list_all(repo, commit)
        files = [
            HubFile(safe_relpath(f["Path"]), f.get("Size"), f.get("Sha256") or None)
            for f in listed
            if isinstance(f, dict) and f.get("Type", "blob") != "tree"
        ]
        return HubRevision(self.name, repo, commit, tuple(sorted(files, key=lambda f: f.path)))

    def _list_all(self, repo: RepoId, commit: str) -> list[dict[str, Any]]:
        """Every file of ``commit``, where one listing came back at the hub's cap: the SDK
        walks the tree folder by folder."""
        try:
            from modelscope_hub import HubApi
        except ImportError:
            raise HubError(
                f"{repo} has {_MS_LISTING_CAP} files or more, and this modelscope package "
                "cannot list them all",
                hub=self.describe(),
                hint="pip install -U modelscope",
            ) from None
        try:
            api = HubApi(endpoint=self.endpoint, token=self._token)
            infos = api.list_repo_files(str(repo), "model", revision=commit, recursive=True)
        except Exception as exc:
            raise HubError(
                f"{self.describe()} failed to list {repo}@{commit}: {type(exc).__name__}",
                hub=self.describe(),
                hint="run the same command again later",
            ) from exc
        return [{"Path": f.path, "Size": f.size, "Sha256": f.sha256, "Type": f.type} for f in infos]

    def fetch(self, repo: RepoId, commit: str, path: str, folder: Path) -> Path:
        try:
            from modelscope.hub.file_download import model_file_download
        except ImportError:
            raise MissingExtra(
                "modelscope", "pulling from ModelScope", "modelscope", alternative=_LEAVE_OUT
            ) from None
        try:
            got = model_file_download(
                str(repo),
                path,
                revision=commit,
                local_dir=str(folder),
                token=self._token,
                endpoint=self.endpoint,
            )
        except Exception as exc:
            raise HubError(
                f"{self.describe()} failed to send {repo}/{path}: {exc}",
                hub=self.describe(),
                hint="run the same command again later",
            ) from exc
        result = Path(got)
        return result if result.is_file() else safe_join(folder, path)


def make_hub(name: str, env: Mapping[str, str] | None = None) -> OriginHub:
    """An origin hub by name (``hf``, ``modelscope``), configured from the environment.

    Raises:
        ConfigError: an unknown hub name, or a malformed ``HF_ENDPOINT``.
    """
    r = Resolver(HUB_SETTINGS, env=env)
    if name in ("hf", "huggingface"):
        return HuggingFaceHub(r.get(HF_ENDPOINT).value, r.get(HF_TOKEN).value)
    if name in ("modelscope", "ms"):
        return ModelScopeHub(r.get(MS_ENDPOINT).value, r.get(MS_TOKEN).value)
    raise ConfigError(
        f"unknown origin {name!r}", hint="use --origin hf, --origin modelscope or --origin none"
    )
