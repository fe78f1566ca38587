"""The reading app: each reader's private link opens their worklist, one case at a time, unaided then aided.

Flask on Werkzeug's threaded server: a handful of readers, each answer a committed row.
The link's token is the reader's only credential; the database keeps its digest. A
reader sees the pseudonymous patient id, the CT and, once their unaided answer is
stored, the model's probability, call and maps; never the label, nor anyone else's
answers. Maps are not served for a case before its unaided answer is stored, so the
aided step cannot be peeked at. Pages and images are not cached and send no referrer
(the token is in the address).
"""

from __future__ import annotations

import re
import sys

from flask import Flask, Response, abort, redirect, render_template_string, request
from sqlalchemy import select
from werkzeug.serving import WSGIRequestHandler, make_server

from explain.reader_study import schema
from explain.reader_study.answers import Refused, parse_answer, position, record
from explain.reader_study.design import token_digest
from vfrac.errors import InputError

SERVED_KINDS = ("bone", "soft", "map", "other")
MAX_FORM_BYTES = 64 * 1024  # an answer is a few hundred bytes
MAP_KINDS = ("map", "other")


def create_app(engine, study_id: int) -> Flask:
    """The app for one study of the database behind `engine`."""
    with engine.connect() as db:
        study = db.execute(select(schema.studies).where(schema.studies.c.id == study_id)).first()
    if study is None:
        raise InputError(f"no reader study {study_id} in {engine.url}; "
                         "python -m explain.reader_study create makes one")
    features = [f for f in study.features.split(",") if f]
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_FORM_BYTES
    app.log_exception = _log_exception_without_token(app)

    def reader_of(token: str):
        with engine.connect() as db:
            reader = db.execute(select(schema.readers).where(
                (schema.readers.c.token_digest == token_digest(token))
                & (schema.readers.c.study_id == study_id))).first()
        if reader is None:
            abort(403, "this link does not open a worklist of this study")
        return reader

    @app.after_request
    def private(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.errorhandler(Refused)
    def refused(error: Refused):
        return render_template_string(REFUSED_PAGE, message=str(error), status=error.status), error.status

    @app.get("/r/<token>")
    def worklist(token: str):
        reader = reader_of(token)
        with engine.connect() as db:
            now = position(db, reader.id)
            if now.case is None:
                return render_template_string(DONE_PAGE, total=now.total, reader=reader.number,
                                              simulated=study.simulated)
            shown = db.execute(select(schema.images.c.id, schema.images.c.slice_index, schema.images.c.kind).where(
                (schema.images.c.case_id == now.case.id)
                & schema.images.c.kind.in_(SERVED_KINDS if now.step == "aided" else ("bone", "soft"))
            ).order_by(schema.images.c.slice_index)).all()
            first = db.execute(select(schema.answers).where(
                (schema.answers.c.reader_id == reader.id) & (schema.answers.c.case_id == now.case.id)
                & (schema.answers.c.step == "unaided"))).first()
        slices = [{} for _ in range(now.case.slices)]
        for image in shown:
            slices[image.slice_index][image.kind] = f"/r/{token}/image/{image.id}.png"
        called = now.case.call
        return render_template_string(
            READING_PAGE, token=token, reader=reader.number, case=now.case, step=now.step, number=now.number,
            total=now.total, slices=slices, unaided=first, features=features, calls=schema.CALLS,
            ratings=schema.RATINGS, simulated=study.simulated, called=called,
            other=[c for c in schema.CALLS if c != called][0])

    @app.get("/r/<token>/image/<int:image_id>.png")
    def image(token: str, image_id: int):
        reader = reader_of(token)
        with engine.connect() as db:
            row = db.execute(select(schema.images.c.case_id, schema.images.c.kind, schema.images.c.png).join(
                schema.worklists, (schema.worklists.c.case_id == schema.images.c.case_id)
                & (schema.worklists.c.reader_id == reader.id)).where(schema.images.c.id == image_id)).first()
            if row is None or row.kind not in SERVED_KINDS:
                abort(404)
            if row.kind in MAP_KINDS and db.execute(select(schema.answers.c.id).where(
                    (schema.answers.c.reader_id == reader.id) & (schema.answers.c.case_id == row.case_id)
                    & (schema.answers.c.step == "unaided"))).first() is None:
                abort(403, "the maps open once the unaided answer is stored")
        return Response(row.png, mimetype="image/png")

    @app.post("/r/<token>/case/<code>/<step>")
    def answer(token: str, code: str, step: str):
        reader = reader_of(token)
        if step not in schema.STEPS:
            abort(404)
        with engine.connect() as db:
            case = db.execute(select(schema.cases.c.slices).join(
                schema.worklists, (schema.worklists.c.case_id == schema.cases.c.id)
                & (schema.worklists.c.reader_id == reader.id)).where(schema.cases.c.code == code)).first()
        if case is None:
            raise Refused(404, "no such case in this worklist")
        record(engine, reader.id, code, step, parse_answer(step, request.form, features, case.slices))
        return redirect(f"/r/{token}", code=303)

    return app


def _log_exception_without_token(app: Flask):
    """Flask's log of an unexpected error names the request's path: the same with the link's token as ***."""

    def log_exception(exc_info) -> None:
        app.logger.error("Exception on %s [%s]", LINK.sub(r"\1***", request.path), request.method,
                         exc_info=exc_info)

    return log_exception


class MaskedLog(WSGIRequestHandler):
    """Werkzeug's request log with each link's token replaced by ***: the console is not a place for credentials."""

    def log(self, type: str, message: str, *args) -> None:
        super().log(type, "%s", LINK.sub(r"\1***", message % args if args else message))


LINK = re.compile(r"(/r/)[^/\s?]+")


def serve(engine, study_id: int, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the study until interrupted; says how readers reach it."""
    app = create_app(engine, study_id)
    try:
        server = make_server(host, port, app, threaded=True, request_handler=MaskedLog)
    except OSError as error:
        raise InputError(f"cannot listen on {host}:{port}: {error.strerror}; choose another --port") from error
    print(f"reading app for study {study_id} on http://{host}:{server.port}/ (each reader opens their own link; "
          "Ctrl+C stops it, answers are kept)", flush=True)
    if host in ("127.0.0.1", "localhost", "::1"):
        print(f"only this machine can reach it; from a reader's machine: ssh -N -L {server.port}:127.0.0.1:"
              f"{server.port} USER@THIS-HOST, then open the link there", flush=True)
    else:
        print(f"listening on {host}: anyone on that network who holds a link can open it; an SSH tunnel to "
              "127.0.0.1 keeps it private", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("reading app stopped; every answer given is stored", flush=True)
    finally:
        server.server_close()


STYLE = """
body{font-family:system-ui,sans-serif;margin:1em 2em;color:#222;max-width:1200px}
.bar{display:flex;justify-content:space-between;align-items:baseline;border-bottom:1px solid #bbb}
.sim{background:#fdecea;border-left:4px solid #c0392b;padding:.3em .6em}
.main{display:flex;gap:2em;margin-top:1em;align-items:flex-start}
.main>div:first-child{width:512px;flex:none}
.viewer{position:relative;width:512px;height:512px;background:#000;cursor:crosshair;user-select:none}
.viewer img{position:absolute;left:0;top:0;width:512px;height:512px;image-rendering:auto}
#marker{position:absolute;width:18px;height:18px;margin:-10px 0 0 -10px;border:2px solid #0f0;border-radius:50%;
 display:none;pointer-events:none}
.controls{margin:.5em 0} fieldset{margin:.6em 0;border:1px solid #ccc} legend{font-weight:600}
.model{font-size:1.1em;background:#eef4fb;padding:.5em;border-left:4px solid #2c6fb7}
button[type=submit]{font-size:1.05em;padding:.4em 1.2em;margin-top:.6em}
"""

READING_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vfrac reading</title>
<meta name="referrer" content="no-referrer"><style>""" + STYLE + """</style></head><body>
<div class="bar"><h1>Case {{ number }} of {{ total }}</h1>
<span>Reader {{ reader }} &middot; patient {{ case.patient_id }} &middot;
<b id="step">{{ 'Step 1: your reading' if step == 'unaided' else 'Step 2: with the model' }}</b></span></div>
{% if simulated %}<p class="sim">SIMULATED study: its answers were made up by vfrac, not given by readers.</p>
{% endif %}
<div class="main"><div>
<div class="viewer" id="viewer"><img id="ct" alt="CT">{% if step == 'aided' %}<img id="heat" alt="map">{% endif %}
<div id="marker"></div></div>
<div class="controls">Slice <input type="range" id="slice" min="0" max="{{ slices|length - 1 }}" value="0">
<span id="slice-label"></span> (mouse wheel scrolls)</div>
<div class="controls">Window: <button type="button" id="window-bone">Bone</button>
<button type="button" id="window-soft">Soft tissue</button> <span id="window-label"></span></div>
{% if step == 'aided' %}<div class="controls"><label><input type="checkbox" id="map-on" checked> map</label>
opacity <input type="range" id="opacity" min="0" max="100" value="60">
<label><input type="radio" name="layer" id="layer-map" value="map" checked> evidence for {{ called }}
(the model's call)</label> <label><input type="radio" name="layer" id="layer-other" value="other"> evidence
for {{ other }}</label></div>{% endif %}
</div><div>
{% if step == 'unaided' %}
<form method="post" action="/r/{{ token }}/case/{{ case.code }}/unaided" id="answer">
<fieldset><legend>Your call</legend>{% for c in calls %}<label><input type="radio" name="call" value="{{ c }}"
 id="call-{{ c }}" required> {{ c }}</label> {% endfor %}</fieldset>
<fieldset><legend>Confidence</legend>{% for k in range(1, 6) %}<label><input type="radio" name="confidence"
 value="{{ k }}" id="confidence-{{ k }}" required> {{ k }}</label> {% endfor %}<br><small>1 unsure .. 5 certain</small>
</fieldset>
<p><small>Once stored, this answer cannot change; the model's output opens next.</small></p>
<button type="submit" id="submit">Store my reading</button></form>
{% else %}
<p>Your reading: <b>{{ unaided.call }}</b>, confidence {{ unaided.confidence }} (stored).</p>
<p class="model" id="model">Model: probability of malignancy <b>{{ '%.2f'|format(case.probability) }}</b>,
call <b>{{ case.call }}</b>.</p>
<form method="post" action="/r/{{ token }}/case/{{ case.code }}/aided" id="answer">
<fieldset><legend>Your final call</legend>{% for c in calls %}<label><input type="radio" name="call"
 value="{{ c }}" id="call-{{ c }}" required> {{ c }}</label> {% endfor %}</fieldset>
<fieldset><legend>Confidence</legend>{% for k in range(1, 6) %}<label><input type="radio" name="confidence"
 value="{{ k }}" id="confidence-{{ k }}" required> {{ k }}</label> {% endfor %}</fieldset>
<fieldset><legend>The map (of the model's call)</legend>{% for r in ratings %}<label><input type="radio"
 name="map_rating" value="{{ r }}" id="rating-{{ loop.index }}" required> {{ r }}</label><br>{% endfor %}
Feature it shows: <select name="map_feature" id="feature"><option value="">none of these</option>
{% for f in features %}<option value="{{ f }}">{{ f.replace('_', ' ') }}</option>{% endfor %}</select></fieldset>
<fieldset><legend>Where is the lesion?</legend><span id="click-note">Click on the image.</span>
<input type="hidden" name="click_slice" id="click-slice"><input type="hidden" name="click_x" id="click-x">
<input type="hidden" name="click_y" id="click-y"></fieldset>
<button type="submit" id="submit">Store and go on</button></form>
{% endif %}
</div></div>
<script>
const slices = {{ slices|tojson }};
let k = Math.floor(slices.length / 2), win = "bone", layer = "map", clicked = null;
const $ = id => document.getElementById(id);
for (const s of slices) for (const url of Object.values(s)) { new Image().src = url; }
function show() {
  $("ct").src = slices[k][win];
  $("slice").value = k;
  $("slice-label").textContent = `${k + 1} of ${slices.length}`;
  $("window-label").textContent = win === "bone" ? "bone (L400 W1800)" : "soft tissue (L40 W400)";
  const heat = $("heat");
  if (heat) { heat.src = slices[k][layer]; heat.style.display = $("map-on").checked ? "" : "none";
              heat.style.opacity = $("opacity").value / 100; }
  const marker = $("marker");
  marker.style.display = clicked && clicked.slice === k ? "block" : "none";
  if (clicked) { marker.style.left = (clicked.x * 100) + "%"; marker.style.top = (clicked.y * 100) + "%"; }
}
$("slice").addEventListener("input", e => { k = Number(e.target.value); show(); });
$("viewer").addEventListener("wheel", e => { e.preventDefault();
  k = Math.min(slices.length - 1, Math.max(0, k + Math.sign(e.deltaY))); show(); }, {passive: false});
$("window-bone").addEventListener("click", () => { win = "bone"; show(); });
$("window-soft").addEventListener("click", () => { win = "soft"; show(); });
if ($("heat")) {
  for (const id of ["map-on", "opacity", "layer-map", "layer-other"]) $(id).addEventListener("input", show);
  for (const id of ["layer-map", "layer-other"]) {
    $(id).addEventListener("change", e => { layer = e.target.value; show(); });
  }
  $("viewer").addEventListener("click", e => {
    const box = $("viewer").getBoundingClientRect();
    clicked = {slice: k, x: (e.clientX - box.left) / box.width, y: (e.clientY - box.top) / box.height};
    $("click-slice").value = k; $("click-x").value = clicked.x.toFixed(4); $("click-y").value = clicked.y.toFixed(4);
    $("click-note").textContent = `marked on slice ${k + 1}`; show();
  });
  $("answer").addEventListener("submit", e => { if (!clicked) { e.preventDefault();
    $("click-note").textContent = "Click on the image where the lesion is, then store."; } });
}
show();
</script></body></html>"""

DONE_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vfrac reading</title>
<style>""" + STYLE + """</style></head><body><h1 id="done">All {{ total }} cases read</h1>
{% if simulated %}<p class="sim">SIMULATED study: its answers were made up by vfrac, not given by readers.</p>
{% endif %}
<p>Thank you, reader {{ reader }}. Every answer is stored; you may close this page.</p></body></html>"""

REFUSED_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vfrac reading</title>
</head><body><h1>Not stored ({{ status }})</h1><p id="refused">{{ message }}</p>
<p>Nothing was written. Go back to your link to continue.</p></body></html>"""
