"""The Flask row's app: one route that answers a small JSON document, the way an API does.

Routing, the request context, ``jsonify`` of a dict with a list: the framework work a typical
JSON endpoint pays per request on top of the server's. Imported only by a server that serves
``apps:flask_json``, so the stdlib rows never load Flask.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

app = Flask(__name__)

_ITEMS = [{"id": i, "name": f"item {i}", "price": i * 1.25} for i in range(10)]


@app.get("/")
def index() -> Any:
    return jsonify(items=_ITEMS, count=len(_ITEMS), agent=request.headers.get("User-Agent"))
