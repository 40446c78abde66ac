"""The Django row's app: a view that renders a template through the default middleware stack.

Configured in-module (``settings.configure``, this module as the URLconf), with the middleware
``django-admin startproject`` generates, the cached template loader a production settings file
gets with ``DEBUG = False``, and a small template: a five-row loop, a few filters and a CSRF
token, which makes the CSRF middleware set its cookie on every response. No database is
touched: sessions are signed cookies and nothing reads ``request.user``. Imported only by a
server that serves ``apps:django_page``.
"""

from __future__ import annotations

import django
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{{ title }}</title></head>
<body>
<h1>{{ title|title }}</h1>
<p>{{ items|length }} items, {{ total|floatformat:2 }} in all.</p>
<table>
{% for item in items %}  <tr class="{% cycle 'odd' 'even' %}"><td>{{ forloop.counter }}</td>
    <td>{{ item.name|capfirst }}</td><td>{{ item.price }}</td>
    <td>{% if item.stock %}{{ item.stock }} left{% else %}sold out{% endif %}</td></tr>
{% endfor %}</table>
<form method="post">{% csrf_token %}<input name="q" value="{{ query|default:'' }}"></form>
</body>
</html>
"""

settings.configure(
    DEBUG=False,
    SECRET_KEY="bench-only-not-a-secret",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
    ],
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ],
    SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
    MESSAGE_STORAGE="django.contrib.messages.storage.cookie.CookieStorage",
    DATABASES={},
    TEMPLATES=[
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "OPTIONS": {
                "context_processors": [
                    "django.template.context_processors.request",
                    "django.contrib.auth.context_processors.auth",
                    "django.contrib.messages.context_processors.messages",
                ],
                "loaders": [
                    (
                        "django.template.loaders.cached.Loader",
                        [("django.template.loaders.locmem.Loader", {"page.html": PAGE})],
                    )
                ],
            },
        }
    ],
    USE_TZ=True,
)
django.setup()

_ITEMS = [{"name": f"item {i}", "price": i * 1.25, "stock": i % 4} for i in range(5)]


def page(request: HttpRequest) -> HttpResponse:
    context = {
        "title": "the bench catalogue",
        "items": _ITEMS,
        "total": sum(item["price"] for item in _ITEMS),
        "query": request.GET.get("q"),
    }
    return render(request, "page.html", context)


urlpatterns = [path("", page)]

app = WSGIHandler()
