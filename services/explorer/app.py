"""The explorer's web app (Starlette): the page and its static files, and a small JSON API over the
gateway's public API. Starlette rather than FastAPI: a dozen handlers, form uploads and binary
responses need nothing more, and it keeps pydantic out of the image.

Errors from the gateway keep their message and become HTTP statuses (INVALID_ARGUMENT 400, NOT_FOUND
404, UNAVAILABLE 503, ...) with a JSON body {"error": message} that the page shows as it is."""

from __future__ import annotations

import asyncio
import base64
import collections
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from semsearch.media import InputError, thumbnail
from semsearch.specs import config_from_spec
from semsearch.v1 import common_pb2, search_pb2
from services.explorer.gateway import Gateway, GatewayError
from services.explorer.maps import Maps

STATIC = Path(__file__).parent / "static"
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
MAX_K = 100
MAX_SELECTION = 500
# Queries kept for "check recall" (the exact re-run needs the query again, image included).
REMEMBERED_QUERIES = 256
# A collection whose item count grew within this many seconds is shown as loading.
LOADING_WINDOW_S = 15.0
IMAGE_MAGIC = {
    b"RIFF": "image/webp",
    b"\x89PNG": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF8": "image/gif",
}


class BadRequest(Exception):
    """Input the page sent that cannot be used: HTTP 400 with this message."""


def payload_fields(payload: bytes) -> dict:
    """A stored payload as the page shows it: a thumbnail (data URL) when it is an image, else its text."""
    if not payload:
        return {"thumbnail": None, "text": None}
    for magic, mime in IMAGE_MAGIC.items():
        if payload.startswith(magic):
            return {"thumbnail": f"data:{mime};base64,{base64.b64encode(payload).decode()}", "text": None}
    try:
        return {"thumbnail": None, "text": payload.decode("utf-8")}
    except UnicodeDecodeError:
        return {"thumbnail": None, "text": None}


def hit_json(hit: common_pb2.Hit) -> dict:
    return {
        "id": hit.id,
        "score": round(hit.score, 6),
        "metadata": dict(hit.metadata),
        **payload_fields(hit.payload),
    }


class Explorer:
    """The handlers and what they share: the gateway client, the maps, remembered queries."""

    def __init__(self, gateway: Gateway, maps: Maps, max_upload_bytes: int = 32 << 20) -> None:
        self.gateway = gateway
        self.maps = maps
        self.max_upload_bytes = max_upload_bytes
        self.queries: collections.OrderedDict[str, tuple[search_pb2.SearchRequest, list[str]]] = (
            collections.OrderedDict()
        )
        self._counts: dict[str, tuple[int, float]] = {}  # collection -> (count, when it last grew)
        self._names: set[str] | None = None  # the collections of the last listing

    # --- collections ----------------------------------------------------------------------------------

    async def collections(self, request: Request) -> Response:
        infos = await self.gateway.collections()
        now = time.monotonic()
        out = []
        for info in infos:
            config = config_from_spec(info.spec)
            count, grew_at = self._counts.get(info.name, (info.count, 0.0))
            if info.count > count:
                grew_at = now
            self._counts[info.name] = (info.count, grew_at)
            out.append({
                "name": info.name, "dim": config.dim, "model": config.model, "count": info.count,
                "state": info.state, "kinds": list(info.query_kinds), "metric": config.metric,
                "fields": [{"name": f.name, "type": f.type} for f in config.fields],
                "thumbnails": config.stores_thumbnails, "loading": now - grew_at < LOADING_WINDOW_S,
            })  # fmt: skip
        names = {info.name for info in infos}
        if names != self._names:  # the first listing, or collections came or went: forget what is gone
            self._names = names
            self._counts = {name: seen for name, seen in self._counts.items() if name in names}
            self.maps.keep_only(names)
        return JSONResponse({"collections": out})

    # --- search ---------------------------------------------------------------------------------------

    async def search(self, request: Request) -> Response:
        form = await request.form(max_files=1, max_fields=20)
        query, query_thumbnail = await self._query_from(form)
        response = await self.gateway.search(query)
        query_id = self._remember(query, [h.id for h in response.hits])
        body = {
            "query": self._describe(query),
            "query_id": query_id,
            "hits": [hit_json(h) for h in response.hits],
            "info": self._info_json(response),
        }
        if query_thumbnail:
            body["query_thumbnail"] = query_thumbnail
        current = self.maps.cached(query.collection)
        if current is not None:
            body["map_points"] = [current.index_of(h.id) for h in response.hits]
        return JSONResponse(body)

    async def _query_from(self, form) -> tuple[search_pb2.SearchRequest, str | None]:
        collection = str(form.get("collection") or "")
        if not collection:
            raise BadRequest("choose a collection")
        k = _number(form.get("k"), int, "k", 10)
        if not 1 <= k <= MAX_K:
            raise BadRequest(f"k must be in [1, {MAX_K}], got {k}")
        recall_target = _number(form.get("recall_target"), float, "recall target", 0.0)
        query = search_pb2.SearchRequest(
            collection=collection, k=k, recall_target=recall_target, filter=str(form.get("filter") or ""),
            include_payloads=True,
        )  # fmt: skip
        image, text, item_id = form.get("image"), form.get("text"), form.get("id")
        query_thumbnail = None
        if isinstance(image, UploadFile):
            data = await image.read(self.max_upload_bytes + 1)
            if len(data) > self.max_upload_bytes:
                raise BadRequest(f"the image is larger than {self.max_upload_bytes >> 20} MB")
            if not data:
                raise BadRequest("the uploaded file is empty")
            query.image = data
            try:
                small = thumbnail(data)
                query_thumbnail = f"data:image/webp;base64,{base64.b64encode(small).decode()}"
            except InputError:
                pass  # the gateway says what is wrong with it, in its own words
        elif item_id:
            query.id = str(item_id)
        elif text is not None and str(text).strip():
            query.text = str(text)
        else:
            raise BadRequest("type some words, give an image or pick an item")
        return query, query_thumbnail

    def _remember(self, query: search_pb2.SearchRequest, ids: list[str]) -> str:
        query_id = "q-" + secrets.token_urlsafe(9)
        self.queries[query_id] = (query, ids)
        while len(self.queries) > REMEMBERED_QUERIES:
            self.queries.popitem(last=False)
        return query_id

    @staticmethod
    def _describe(query: search_pb2.SearchRequest) -> dict:
        return {
            "collection": query.collection,
            "kind": query.WhichOneof("query"),
            "text": query.text,
            "id": query.id,
            "k": query.k,
            "recall_target": query.recall_target or None,
            "filter": query.filter,
        }

    @staticmethod
    def _info_json(response: search_pb2.SearchResponse) -> dict:
        timings = [{"stage": t.stage, "ms": round(t.seconds * 1000, 2)} for t in response.timings]
        return {
            "cached": response.cached,
            "model_version": response.model_version,
            "shards_answered": response.shards_answered,
            "shards_queried": response.shards_queried,
            "generations": {str(k): v for k, v in response.generations.items()},
            "timings": timings,
            "total_ms": round(sum(t["ms"] for t in timings), 2),
            "shards": [
                {
                    "shard": s.shard,
                    "plan": s.plan,
                    "depth": round(s.depth, 2),
                    "matched": s.matched,
                    "batch_size": s.batch_size,
                    "ms": round(s.seconds * 1000, 2),
                }
                for s in response.shard_info
            ],
        }

    async def exact(self, request: Request) -> Response:
        """Re-run a remembered query exhaustively: recall@k of what the index returned, and the exact hits
        it missed."""
        body = await _json(request)
        remembered = self.queries.get(str(body.get("query_id", "")))
        if remembered is None:
            raise BadRequest("that query is no longer remembered: search again, then check its recall")
        query, served = remembered
        exact_query = search_pb2.SearchRequest()
        exact_query.CopyFrom(query)
        exact_query.exact = True
        exact_query.no_cache = True
        begin = time.perf_counter()
        response = await self.gateway.search(exact_query, timeout=120.0)
        ms = (time.perf_counter() - begin) * 1000
        exact_ids = [h.id for h in response.hits]
        found = set(served)
        recall = len(found & set(exact_ids)) / len(exact_ids) if exact_ids else 1.0
        hits = [{**hit_json(h), "missed": h.id not in found} for h in response.hits]
        return JSONResponse({"recall": round(recall, 4), "k": query.k, "exact": hits, "ms": round(ms, 1)})

    # --- map and quality ------------------------------------------------------------------------------

    async def _map_status(self, name: str):
        info = await self.gateway.describe(name)
        config = config_from_spec(info.spec)
        fields = [f.name for f in config.fields if f.type == "string"]
        return self.maps.status(name, info.count, fields, "l2" if config.metric == "l2" else "cosine")

    async def map(self, request: Request) -> Response:
        state, found = await self._map_status(request.path_params["collection"])
        if state == "ready":
            return Response(found.payload(), media_type="application/octet-stream")
        if state == "computing":
            return JSONResponse(
                {"state": "computing", "phase": found.phase, "progress": round(found.progress, 3)}
            )
        if state == "failed":
            return JSONResponse(
                {"error": f"the map could not be computed ({found.error}); retrying shortly"}, 503
            )
        return JSONResponse({"state": "empty"})

    def _ready_map(self, name: str):
        current = self.maps.cached(name)
        if current is None:
            raise HTTPException(409, "the map of this collection is not ready yet")
        return current

    async def _items(self, name: str, indices: list[int]) -> list[dict]:
        current = self._ready_map(name)
        if any(not 0 <= i < len(current.ids) for i in indices):
            raise BadRequest(f"point indices must be in [0, {len(current.ids)})")
        ids = [current.ids[i] for i in indices]
        response = await self.gateway.get(name, ids) if ids else search_pb2.GetResponse()
        stored = {item.id: item for item in response.items}
        out = []
        for i, item_id in zip(indices, ids):
            item = stored.get(item_id)
            payload = payload_fields(item.payload) if item is not None else {"thumbnail": None, "text": None}
            metadata = dict(item.metadata) if item is not None else current.metadata[i]
            out.append({"index": i, "id": item_id, "metadata": metadata, "deleted": item is None, **payload})
        return out

    async def map_point(self, request: Request) -> Response:
        index = _number(request.path_params["index"], int, "point", 0)
        (item,) = await self._items(request.path_params["collection"], [index])
        return JSONResponse(item)

    async def map_selection(self, request: Request) -> Response:
        body = await _json(request)
        points = body.get("points")
        if not isinstance(points, list) or not all(isinstance(p, int) for p in points):
            raise BadRequest("points must be a list of point indices")
        items = await self._items(request.path_params["collection"], points[:MAX_SELECTION])
        return JSONResponse({"items": items, "total": len(points)})

    async def quality(self, request: Request) -> Response:
        name = request.path_params["collection"]
        state, found = await self._map_status(name)
        if state != "ready":
            return JSONResponse(
                {"state": state, "error": "the collection's sample is still being computed"}, 409
            )
        field = request.query_params.get("field") or found.field
        if not field or not any(field in m for m in found.metadata[:1000]):
            raise BadRequest(f"collection {name!r} has no metadata field {field!r} to measure quality by")
        report = await _in_thread(found.report, field)
        return JSONResponse({"field": field, **report})

    # --- health ---------------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(self, request: Request) -> Response:
        try:
            await self.gateway.collections(timeout=2.0)
        except GatewayError as exc:
            return JSONResponse({"ok": False, "error": exc.message}, 503)
        return JSONResponse({"ok": True})


def _number(value, kind: Callable, what: str, default):
    if value is None or str(value).strip() == "":
        return default
    try:
        return kind(str(value))
    except ValueError:
        raise BadRequest(f"{what} must be a number, got {str(value)[:40]!r}") from None


async def _json(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the request body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


async def _in_thread(function, *args):
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


async def _gateway_error(request: Request, exc: GatewayError) -> Response:
    return JSONResponse({"error": exc.message, "code": exc.code}, HTTP_STATUS.get(exc.code, 502))


async def _bad_request(request: Request, exc: BadRequest) -> Response:
    return JSONResponse({"error": str(exc)}, 400)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"error": exc.detail}, exc.status_code)


async def _index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def create_app(explorer: Explorer, lifespan=None, max_body_bytes: int = 40 << 20) -> Starlette:
    routes = [
        Route("/", _index),
        Route("/healthz", explorer.healthz),
        Route("/readyz", explorer.readyz),
        Route("/api/collections", explorer.collections),
        Route("/api/search", explorer.search, methods=["POST"]),
        Route("/api/exact", explorer.exact, methods=["POST"]),
        Route("/api/map/{collection}", explorer.map),
        Route("/api/map/{collection}/point/{index}", explorer.map_point),
        Route("/api/map/{collection}/selection", explorer.map_selection, methods=["POST"]),
        Route("/api/quality/{collection}", explorer.quality),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {GatewayError: _gateway_error, BadRequest: _bad_request, HTTPException: _http_error}
    return Starlette(
        routes=routes, exception_handlers=handlers, lifespan=lifespan, max_body_size=max_body_bytes
    )
