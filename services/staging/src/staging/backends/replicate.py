"""The `replicate` backend: Replicate's predictions API, polled, one paid call per attempt.

The prediction id is handed to `on_submitted` (which commits it to the job row) before any
waiting, and a job that runs again resumes that prediction instead of creating another. Replicate
has no idempotency key, so the only window for a second charge is between its answer to the
create call and that commit; a `Cancel-After` deadline also makes Replicate stop a prediction
that nobody polls any more.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from contracts.reasons import FailureReason
from staging.backends.base import (
    NO_OP_SUBMITTED,
    BackendRefused,
    OnSubmitted,
    StageRequest,
    StageResult,
    TransientBackendError,
)
from staging.backends.prompts import Prompt, build_prompt
from staging.backends.remote import (
    RemoteLimits,
    decode_output,
    download,
    download_client,
    error_text,
    jpeg_data_url,
    json_object,
    retry_after,
)

logger = logging.getLogger(__name__)

SOURCE = "Replicate"
RUNNING = frozenset({"starting", "processing"})
STOPPED = frozenset({"canceled", "aborted"})
RATE_LIMIT_RETRIES = 3

_SAFETY = re.compile(r"nsfw|sensitive|safety|flagged|moderat|content polic|E005", re.IGNORECASE)
_BAD_IMAGE = re.compile(
    r"cannot identify image|invalid image|unsupported image|image.*(too small|too large)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ReplicateModel:
    """One model on Replicate: how to phrase its input, and what a run costs."""

    id: str
    price_usd: float
    build_input: Callable[[str, Prompt, int | None], dict[str, Any]]


def _qwen_input(image: str, prompt: Prompt, seed: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image": image,
        "prompt": prompt.inline(),
        "go_fast": True,
        "aspect_ratio": "match_input_image",
        "output_format": "webp",
        "output_quality": 95,
    }
    if seed is not None:
        body["seed"] = seed
    return body


def _flux_kontext_input(image: str, prompt: Prompt, seed: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": prompt.inline(),
        "input_image": image,
        "aspect_ratio": "match_input_image",
        "output_format": "png",
        "safety_tolerance": 2,
        "prompt_upsampling": False,
    }
    if seed is not None:
        body["seed"] = seed
    return body


MODELS: dict[str, ReplicateModel] = {
    m.id: m
    for m in (
        # Prices per output image as listed by Replicate for these official models.
        ReplicateModel("qwen/qwen-image-edit", 0.03, _qwen_input),
        ReplicateModel("black-forest-labs/flux-kontext-max", 0.08, _flux_kontext_input),
    )
}


@dataclass(frozen=True)
class ReplicateConfig:
    """Where Replicate is, with which token, and how patiently to poll it."""

    token: str
    api_base: str = "https://api.replicate.com"
    default_model: str = "black-forest-labs/flux-kontext-max"
    poll_initial_seconds: float = 1.0
    poll_max_seconds: float = 5.0
    timeout_seconds: float = 300.0
    limits: RemoteLimits = field(default_factory=RemoteLimits)


class PredictionGone(Exception):
    """Replicate no longer knows the prediction (expired or never existed)."""


class ReplicateBackend:
    """Stages photos with an image-editing model on Replicate."""

    name = "replicate"
    models: tuple[str, ...] = tuple(MODELS)

    def __init__(self, config: ReplicateConfig) -> None:
        self.config = config
        self._client = httpx.AsyncClient(
            base_url=config.api_base.rstrip("/"),
            headers={"Authorization": f"Bearer {config.token}"},
            timeout=httpx.Timeout(config.limits.request_timeout_seconds, connect=10.0),
            trust_env=False,
        )
        # Output files come from another host: the API token must never travel there.
        self._downloads = download_client(config.limits)

    async def aclose(self) -> None:
        """Close the connection pools."""
        await self._client.aclose()
        await self._downloads.aclose()

    async def stage(
        self,
        request: StageRequest,
        *,
        resume_id: str | None = None,
        on_submitted: OnSubmitted = NO_OP_SUBMITTED,
    ) -> StageResult:
        """Resume the job's prediction if it has one, else create it; wait; fetch the output."""
        model = MODELS.get(request.model or self.config.default_model)
        if model is None:
            raise BackendRefused(
                f"the Replicate model {request.model!r} is not supported",
                reason=FailureReason.INTERNAL,
            )
        prediction: dict[str, Any] | None = None
        if resume_id is not None:
            try:
                prediction = await self._get(resume_id)
                logger.info("resuming Replicate prediction %s", resume_id)
            except PredictionGone:
                # Its result can no longer be fetched: only a new prediction can stage the photo.
                logger.warning("Replicate prediction %s is gone; creating a new one", resume_id)
        if prediction is None:
            prediction = await self._submit(model, request, on_submitted)
        prediction_id = str(prediction["id"])
        finished = await self._wait(prediction_id, prediction)
        url = _output_url(finished)
        if url.startswith("data:"):
            data = _data_url_bytes(url)
        else:
            data = await download(self._downloads, url, self.config.limits, source=SOURCE)
        photo = await asyncio.to_thread(decode_output, data, self.config.limits, source=SOURCE)
        return StageResult(
            photo=photo, model=model.id, cost_usd=model.price_usd, prediction_id=prediction_id
        )

    async def _submit(
        self, model: ReplicateModel, request: StageRequest, on_submitted: OnSubmitted
    ) -> dict[str, Any]:
        image = await asyncio.to_thread(jpeg_data_url, request.photo, self.config.limits)
        body = {
            "input": model.build_input(
                image, build_prompt(request.room_type, request.style), request.seed
            )
        }
        owner, _, name = model.id.partition("/")
        prediction = await self._create(f"/v1/models/{owner}/{name}/predictions", body)
        prediction_id = str(prediction["id"])
        try:
            await on_submitted(prediction_id)
        except BaseException:
            # The id could not be recorded: nobody would ever collect this result, so stop it.
            await asyncio.shield(self._cancel_quietly(prediction_id))
            raise
        return prediction

    async def _create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        # No `Prefer: wait`: the id must come back at once so it is stored before any waiting.
        headers = {"Cancel-After": f"{int(self.config.timeout_seconds) + 60}s"}
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                response = await self._client.post(path, json=body, headers=headers)
            except httpx.HTTPError as exc:
                raise TransientBackendError(
                    f"could not reach Replicate to start the prediction ({type(exc).__name__})"
                ) from exc
            if response.status_code == 429 and attempt < RATE_LIMIT_RETRIES:
                # Rate limited before anything was created: waiting and asking again is free.
                await asyncio.sleep(self._retry_after(response))
                continue
            break
        self._raise_for_status(response, "starting the prediction")
        prediction = json_object(response, source=SOURCE)
        if not isinstance(prediction.get("id"), str) or not prediction["id"]:
            raise TransientBackendError("Replicate started a prediction but sent no id back")
        return prediction

    async def _get(self, prediction_id: str) -> dict[str, Any]:
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                response = await self._client.get(f"/v1/predictions/{prediction_id}")
            except httpx.HTTPError as exc:
                raise TransientBackendError(
                    f"could not reach Replicate to check prediction {prediction_id} "
                    f"({type(exc).__name__})"
                ) from exc
            if response.status_code == 429 and attempt < RATE_LIMIT_RETRIES:
                await asyncio.sleep(self._retry_after(response))
                continue
            break
        if response.status_code == 404:
            raise PredictionGone(prediction_id)
        self._raise_for_status(response, f"checking prediction {prediction_id}")
        prediction = json_object(response, source=SOURCE)
        if not isinstance(prediction.get("status"), str):
            raise TransientBackendError(
                f"Replicate's reply about prediction {prediction_id} has no status"
            )
        prediction.setdefault("id", prediction_id)
        return prediction

    async def _wait(self, prediction_id: str, prediction: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout_seconds
        delay = self.config.poll_initial_seconds
        while True:
            status = prediction.get("status")
            if status == "succeeded":
                return prediction
            if status == "failed":
                raise _failure(prediction_id, prediction)
            if status in STOPPED:
                raise TransientBackendError(
                    f"Replicate prediction {prediction_id} was {status} before it finished",
                    resumable=False,
                )
            if status not in RUNNING:
                raise TransientBackendError(
                    f"Replicate reported an unknown status {status!r} for {prediction_id}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                await self._cancel_quietly(prediction_id)
                raise TransientBackendError(
                    f"Replicate prediction {prediction_id} did not finish within "
                    f"{self.config.timeout_seconds:.0f} s and was cancelled",
                    resumable=False,
                    reason=FailureReason.TOOK_TOO_LONG,
                )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 1.5, self.config.poll_max_seconds)
            try:
                prediction = await self._get(prediction_id)
            except PredictionGone as exc:
                raise TransientBackendError(
                    f"Replicate lost prediction {prediction_id} while it ran", resumable=False
                ) from exc

    async def _cancel_quietly(self, prediction_id: str) -> None:
        try:
            await self._client.post(f"/v1/predictions/{prediction_id}/cancel")
        except httpx.HTTPError as exc:
            logger.warning("could not cancel Replicate prediction %s: %s", prediction_id, exc)

    def _retry_after(self, response: httpx.Response) -> float:
        return retry_after(
            response,
            default=self.config.poll_initial_seconds,
            cap=self.config.limits.max_retry_after_seconds,
        )

    def _raise_for_status(self, response: httpx.Response, doing: str) -> None:
        code = response.status_code
        if code < 400:
            return
        detail = error_text(response)
        if code in (400, 422):
            if _SAFETY.search(detail):
                raise BackendRefused(
                    f"Replicate's safety filter refused the request (HTTP {code}): {detail}",
                    reason=FailureReason.MODEL_REFUSED_SAFETY,
                )
            raise BackendRefused(f"Replicate refused the request (HTTP {code}): {detail}")
        if code == 404:
            raise BackendRefused(
                f"the Replicate model is not available while {doing} (HTTP 404): {detail}",
                reason=FailureReason.SERVICE_BUSY,
            )
        if code in (401, 403):
            raise TransientBackendError(
                f"Replicate refused our API token while {doing} (HTTP {code}); check "
                "STAGING_REPLICATE_API_TOKEN"
            )
        raise TransientBackendError(f"Replicate answered HTTP {code} while {doing}: {detail}")


def _failure(prediction_id: str, prediction: dict[str, Any]) -> Exception:
    """What a failed prediction means for the job: a refusal, or worth another try."""
    error = str(prediction.get("error") or "no reason given")
    if _SAFETY.search(error):
        return BackendRefused(
            f"Replicate prediction {prediction_id} failed its safety filter: {error[:300]}",
            reason=FailureReason.MODEL_REFUSED_SAFETY,
        )
    if _BAD_IMAGE.search(error):
        return BackendRefused(
            f"Replicate prediction {prediction_id} could not use the photo: {error[:300]}"
        )
    return TransientBackendError(
        f"Replicate prediction {prediction_id} failed: {error[:300]}", resumable=False
    )


def _data_url_bytes(url: str) -> bytes:
    try:
        return base64.b64decode(url.partition(",")[2], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TransientBackendError("Replicate returned an undecodable data URL") from exc


def _output_url(prediction: dict[str, Any]) -> str:
    output = prediction.get("output")
    if isinstance(output, list):
        output = output[0] if output else None
    if not isinstance(output, str) or not output.startswith(("http://", "https://", "data:")):
        raise TransientBackendError(
            f"Replicate prediction {prediction.get('id')} succeeded without an output URL"
        )
    return output
