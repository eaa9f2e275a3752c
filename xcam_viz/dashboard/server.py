"""`serve`: the dashboard on a server (what `xcam-viz serve` runs).

`/` is the participants' page: each browser session opens the Dashboard on its workspace (the shared
one, or per-user the logged-in user's, or an anonymous participant's named by a signed cookie).
`/instructor` is the instructor's page, open to the link the server prints (`?key=...`, the same after a
restart) and, with a users file, to the users named as instructors. Basic auth guards both.
"""
from __future__ import annotations

import hmac
import html
import json
from pathlib import Path

import panel as pn
from bokeh.models import CustomJS

from ..finetune.runqueue import RunQueue
from .dashboard import Dashboard, build_workbench
from .instructor import InstructorPage
from .sessions import ROUTES
from .upload import MAX_UPLOAD_MB, websocket_limit
from .workspaces import COOKIE, Workspaces

COOKIE_DAYS = 30
LOGIN_PAGE = Path(__file__).with_name("login.html")     # Panel's own links its logo from a CDN: blank offline


def users_file(basic_auth: str | None) -> Path | None:
    """The users file `basic_auth` names, checked: a JSON object of {user: password}; None for a password
    (or no auth). A value ending in .json that is no file is an error, not a password."""
    if not basic_auth:
        return None
    path = Path(basic_auth)
    if path.suffix.lower() != ".json" and not path.is_file():
        return None
    if not path.is_file():
        raise ValueError(f"--basic-auth {basic_auth}: no such file; give a JSON file of {{\"user\": \"password\"}}, "
                         "or a password shared by everyone (better through the XCAM_VIZ_PASSWORD variable)")
    try:
        users = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"--basic-auth {path} is not readable JSON ({err}); write it as "
                         "{\"ana\": \"password1\", \"ben\": \"password2\"}") from None
    if not (isinstance(users, dict) and users and all(isinstance(k, str) and k.strip() and isinstance(v, str) and v
                                                      for k, v in users.items())):
        raise ValueError(f"--basic-auth {path} must hold a JSON object of user names and passwords (non-empty "
                         "strings), e.g. {\"ana\": \"password1\", \"ben\": \"password2\"}")
    return path


def serve(model=None, data=None, feedback=None, port: int = 5006, address: str = "127.0.0.1",
          show: bool = False, websocket_origin: list[str] | None = None, basic_auth: str | None = None,
          max_upload_mb: float = MAX_UPLOAD_MB, size: tuple[int, ...] | None = None, channels: int | None = None,
          demo: str = "demo", window=None, workspaces: str = "shared", workspace_dir=None,
          max_runs: int | None = None, instructors=("instructor",), **kw):
    """Serve the dashboard (one Dashboard per browser session) and the instructor's page; blocks.

    basic_auth: a password everyone shares (each types their own user name), or a JSON file of
        {user: password}, asked for on Panel's login page.
    max_upload_mb: the largest image a user may upload; the server drops larger websocket messages.
    size, channels: what data given as paths is fitted to (default: what the model takes; `build_workbench`).
    demo: the demo served when neither model nor data is given ("demo" or "volumes").
    window: the window medical volumes given as paths are read through (a preset of `xv.data.WINDOWS`).
    workspaces: "shared" (one workspace for everyone) or "per-user" (each participant's own feedback and
        model versions, from the same base model), kept in `workspace_dir` (default: beside the feedback
        database, `workspaces.default_folder`).
    max_runs: fine-tuning runs at once (default: one per core but one); the others wait in a queue.
    instructors: users of a users file who may open /instructor without its link.
    """
    users = users_file(basic_auth)
    queue = RunQueue(max_runs)
    root = build_workbench(model, data, feedback, size, channels, demo, window).warm()
    spaces = Workspaces(root, workspaces, workspace_dir, queue)
    origins = websocket_origin or [f"{host}:{port}" for host in {address, "localhost", "127.0.0.1"}]
    if basic_auth:          # per-user: a secret kept with the workspaces, so logins outlive a restart
        kw.update(basic_auth=str(users or basic_auth), cookie_secret=kw.get("cookie_secret") or spaces.secret.hex(),
                  basic_login_template=str(LOGIN_PAGE))
    notes = {note for data in root.splits.values() if (note := data.attrs.get("conversion"))}
    kind = "volumes" if len(root.input_shape) == 4 else "images"
    print(" · ".join([", ".join(f"{name}: {len(data)} {kind}" for name, data in root.splits.items()),
                      "model input " + "×".join(map(str, root.input_shape)), *sorted(notes)]), flush=True)
    print((f"workspaces: one per participant in {spaces.folder}" if spaces.per_user else
           "workspaces: one, shared by everyone") + f" · fine-tuning: at most {queue.max_runs} run"
          f"{'s' * (queue.max_runs != 1)} at once", flush=True)
    print(f"xcam-viz dashboard on http://{address}:{port}/", flush=True)
    print(f"instructor's page: http://{address}:{port}/instructor?key={spaces.instructor_key}", flush=True)
    named = tuple(instructors) if users else ()          # with a shared password anyone may take any name
    apps = {"/": lambda: participant_page(spaces, max_upload_mb, bool(basic_auth)),
            "/instructor": lambda: instructor_page(spaces, named)}
    return pn.serve(apps, port=port, address=address, show=show, title="xcam-viz", websocket_origin=origins,
                    websocket_max_message_size=websocket_limit(max_upload_mb),
                    extra_patterns=[*ROUTES, *kw.pop("extra_patterns", [])], **kw)


def participant_page(spaces: Workspaces, max_upload_mb: float = MAX_UPLOAD_MB,
                     authenticated: bool = False) -> pn.template.BootstrapTemplate:
    """This browser session's Dashboard, on its participant's workspace; the header says whose."""
    if not spaces.per_user:
        return Dashboard(workbench=spaces.workbench(), max_upload_mb=max_upload_mb).template(
            "xcam-viz · shared workspace")
    name = pn.state.user if authenticated else spaces.guest(pn.state.cookies.get(COOKIE))
    if name is None:
        name, cookie = spaces.new_guest()
        pn.state.curdoc.js_on_event("document_ready", CustomJS(
            code=f"document.cookie = '{COOKIE}={cookie}; path=/; max-age={COOKIE_DAYS * 86400}; SameSite=Lax';"))
    dashboard = Dashboard(workbench=spaces.workbench(name), max_upload_mb=max_upload_mb)
    return dashboard.template(f"xcam-viz · {html.escape(name)}'s workspace")


def instructor_page(spaces: Workspaces, instructors=()) -> pn.template.BootstrapTemplate:
    """The instructor's page for the printed link or a named instructor; otherwise a page saying how to open it."""
    key = (pn.state.session_args.get("key") or [b""])[0]
    if hmac.compare_digest(key, spaces.instructor_key.encode()) or pn.state.user in instructors:
        return InstructorPage(spaces).template()
    who = f" or log in as {' or '.join(instructors)}" if instructors else ""
    return pn.template.BootstrapTemplate(title="xcam-viz · instructor", main=[pn.pane.Markdown(
        "This page is the instructor's. Open the link `xcam-viz serve` printed when it started "
        f"(`…/instructor?key=…`){who}.", css_classes=["xv-instructor-refused"])])
