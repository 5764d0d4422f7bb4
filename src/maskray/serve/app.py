"""The FastAPI app: one page (``static/``, served from the package, no CDN) and a small JSON API.

Every request is validated (types, sizes, counts, numbers in range) and every refusal is a JSON body
``{"detail": "one line"}``: 404 for an unknown case or generation, 422 for a bad value or a nodule the rules
do not allow (``"nodule"``: its index), 429 when the queue is full, 400 for anything else the user can fix.
Case and job ids are looked up in tables; none is ever joined into a path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from maskray import __version__
from maskray.errors import MaskrayError
from maskray.serve.jobs import Busy, UnknownJob
from maskray.serve.service import GenerateParams, Service
from maskray.serve.workspace import MAX_NODULES, Nodule, PlacementError, UnknownCase

STATIC = Path(__file__).parent / "static"
MAX_SEEDS = 8
MAX_STEPS = 200
MAX_GUIDANCE = 20.0
CaseId = Annotated[str, Field(min_length=1, max_length=200)]


class NoduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    y: int = Field(ge=0, le=100_000, description="row of the centre, in pixels of the case's label map")
    x: int = Field(ge=0, le=100_000, description="column of the centre")
    diameter_mm: float = Field(gt=0, le=1000)


class MaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    case_id: CaseId
    nodules: list[NoduleIn] = Field(default_factory=list, max_length=MAX_NODULES)

    def placed(self) -> tuple[Nodule, ...]:
        return tuple(Nodule(n.y, n.x, n.diameter_mm) for n in self.nodules)


class GenerateIn(MaskIn):
    mode: Literal["new", "inpaint"] = "new"
    scheduler: str = Field(GenerateParams.scheduler, max_length=20)
    steps: int = Field(GenerateParams.steps, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(None, ge=0.0, le=MAX_GUIDANCE)  # None: the model's default
    seeds: list[Annotated[int, Field(ge=0, lt=2**63)]] = Field(default_factory=lambda: [0], min_length=1,
                                                             max_length=MAX_SEEDS)


def _one_line(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _one_line(exc)}, status_code=422)

    @app.exception_handler(MaskrayError)
    async def refused(_: Request, exc: MaskrayError):
        if isinstance(exc, PlacementError):
            return JSONResponse({"detail": str(exc), "nodule": exc.index}, status_code=422)
        code = 404 if isinstance(exc, (UnknownCase, UnknownJob)) else 429 if isinstance(exc, Busy) else 400
        headers = {"Retry-After": "5"} if code == 429 else None
        return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="maskray serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    _install_errors(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info():
        return {**service.info(), "limits": {"seeds": MAX_SEEDS, "steps": MAX_STEPS, "guidance": MAX_GUIDANCE,
                                             "nodules": MAX_NODULES}}

    _case_routes(app, service)
    _job_routes(app, service)
    return app


def _case_routes(app: FastAPI, service: Service) -> None:
    @app.get("/api/cases")
    def cases(q: Annotated[str, Query(max_length=200)] = "", offset: Annotated[int, Query(ge=0)] = 0,
              limit: Annotated[int, Query(ge=1, le=200)] = 40):
        total, ids = service.workspace.search(q, offset, limit)
        return {"total": total, "offset": offset, "ids": ids}

    @app.get("/api/cases/{case_id}")
    def case(case_id: str):
        return service.case(case_id)

    @app.get("/api/cases/{case_id}/{what}.png")
    def case_png(case_id: str, what: Literal["image", "mask"]):
        return _png(service.case_png(case_id, what))

    @app.post("/api/mask")
    def mask(body: MaskIn):
        return _png(service.edited_mask(body.case_id, body.placed()))


def _job_routes(app: FastAPI, service: Service) -> None:
    @app.post("/api/generate", status_code=202)
    def generate(body: GenerateIn):
        p = GenerateParams(body.case_id, body.placed(), body.mode, body.scheduler.lower(), body.steps,
                           body.guidance_scale, tuple(body.seeds))
        job = service.submit(p)
        return {"job": job.id, "state": job.state, "position": service.jobs.position(job)}

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str):
        j = service.jobs.get(job_id)
        return {"job": j.id, "state": j.state, "position": service.jobs.position(j), "done": j.done,
                "total": j.total, "error": j.error, "seconds": j.seconds,
                "images": len(j.result.images) if j.state == "done" else 0,
                "seeds": list(j.params.seeds),
                # with --check: each image's verdict and reasons (None: no checker)
                "checks": ([{"passed": c["passed"], "failures": c["failures"]} if c else None
                            for c in map(j.result.check_of, range(len(j.result.images)))]
                           if j.state == "done" else [])}

    @app.get("/api/jobs/{job_id}/{k}/view/{what}.png")
    def view(job_id: str, k: Annotated[int, PathParam(ge=0, lt=MAX_SEEDS)], what: str):
        return _png(service.view_png(job_id, k, what))

    @app.get("/api/jobs/{job_id}/{k}/download/{name}")
    def download(job_id: str, k: Annotated[int, PathParam(ge=0, lt=MAX_SEEDS)], name: str):
        data, media, filename = service.download(job_id, k, name)
        return Response(data, media_type=media, headers={
            "Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"})

    @app.post("/api/jobs/{job_id}/{k}/save")
    def save(job_id: str, k: Annotated[int, PathParam(ge=0, lt=MAX_SEEDS)]):
        return {"case_id": service.save(job_id, k)}
