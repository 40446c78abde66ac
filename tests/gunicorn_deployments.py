"""gunicorn command lines and config files from public deployments, to run with the one word
``gunicorn`` replaced by ``wsgiloop`` (issue 11's table, run by test_gunicorn_compat.py).

Each entry names where it was found. Every option is kept as published; only what cannot run
here is replaced, always the same way: the app becomes ``{app}`` (tests/apps.py's hello app,
or a module the test writes where the entry's point is how the app is found), TCP addresses
become ``{bind}`` (127.0.0.1, port 0) or ``$PORT``, paths (sockets, logs, ``--chdir``) move
under ``{tmp}``, and users become ``nobody``/``nogroup``. Config files are the settings the
published file sets, in its order, without its comments, with hook bodies of our own.

``expect`` is ``"serves"`` (starts, answers 200, stops with status 0 on SIGTERM) or the words
of the one-line reason it is refused with (exit status 2).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Deployment:
    source: str
    argv: str = ""  # the command line after "gunicorn", shell-quoted
    config: str = ""  # a config file's text (written to {tmp}/gunicorn.conf.py, given with -c)
    expect: str = "serves"
    port_env: bool = False  # the platform sets PORT (Heroku, Cloud Run, App Engine, tsuru)


DEPLOYMENTS = [
    # -- command lines: Dockerfiles, entrypoints, Procfiles, systemd units -----------------------
    Deployment("github.com/sintaxis9/SalesPredictor-PMV backend/start.sh",
               "{app} --workers 4 --bind {bind} --timeout 120 --access-logfile - "
               "--error-logfile -"),
    Deployment("github.com/rozuur/s3browser start_gunicorn.sh",
               "--bind {bind} {app} --chdir {tmp} --workers=2 --threads=4 "
               "--worker-class=gthread --worker-tmp-dir /dev/shm"),
    Deployment("github.com/PATH-Global-Health/flare flare/entrypoint.sh",
               "--workers=3 {app} --bind {bind} --worker-tmp-dir /dev/shm --log-level info"),
    Deployment("github.com/tri-bui/energy-predictor packages/gb_api/gb_api/run.sh",
               "--bind {bind} --timeout 0 --worker-tmp-dir /dev/shm --workers=4 --threads=4 "
               "--worker-class=gthread --log-file=- {app}"),
    Deployment("github.com/sugengdcahyo/pyiiif start.sh",
               "{app} -b {bind} -w 2 -k gthread --threads 4 --timeout 120 --log-level info "
               "--access-logfile - --error-logfile - --capture-output --access-logformat "
               "'%(h)s - %(u)s [%(t)s] \"%(r)s\" %(s)s %(b)s \"%(f)s\" \"%(a)s\" %(D)sµs'"),
    Deployment("github.com/nikhivishwaa/me-project commans.sh (a systemd unit's ExecStart)",
               "--access-logfile - --workers 3 --bind unix:{tmp}/gunicorn.sock {app}"),
    Deployment("github.com/4darsh-Dev/NyaySarathi gunicorn_service.sh (the same DigitalOcean "
               "unit, run as User=ubuntu Group=www-data)",
               "--access-logfile - --workers 3 --bind unix:{tmp}/gunicorn.sock "
               "--user nobody --group nogroup {app}"),
    Deployment("GoogleCloudPlatform/python-docs-samples run/idp-sql/Dockerfile (Cloud Run)",
               "--bind :$PORT --workers 1 --threads 8 --timeout 0 main:app", port_env=True),
    Deployment("GoogleCloudPlatform/python-docs-samples app.yaml entrypoint (App Engine)",
               "-b :$PORT main:app", port_env=True),
    Deployment("stackoverflow.com/questions/16416172 (a Heroku Procfile)",
               "--pythonpath {tmp}/site proj.wsgi", port_env=True),
    Deployment("interactive-ebooks.herokuapp.com Procfile (Heroku)",
               "--chdir {tmp} --log-file - --error-logfile - main:app", port_env=True),
    Deployment("docs.tsuru.io/0.4/using/procfile.html (bare module: module:application)",
               "-w 3 wsgi", port_env=True),
    Deployment("Heroku's Django Procfile, web: gunicorn project.wsgi (no bind: PORT)",
               "proj.wsgi --log-file -", port_env=True),
    Deployment("docs.gunicorn.org run.html", "--workers=2 {app} --bind {bind}"),
    Deployment("flask.palletsprojects.com deploying/gunicorn (an app factory)",
               "-w 4 -b {bind} \"apps:factory('Hello, world!')\""),
    Deployment("docs.djangoproject.com howto/deployment/wsgi/gunicorn",
               "proj.wsgi --bind {bind} --chdir {tmp}"),
    Deployment("DigitalOcean: How To Set Up Django with Postgres, Nginx, and Gunicorn",
               "--bind {bind} proj.wsgi --chdir {tmp}"),
    Deployment("Test-Driven Development with Python (H. Percival), the deployment chapter",
               "--bind unix:{tmp}/SITENAME.socket --access-logfile {tmp}/access.log "
               "--error-logfile {tmp}/error.log {app}"),
    Deployment("docs.pylonsproject.org pyramid cookbook, deployment/gunicorn",
               "--paste {tmp}/production.ini --bind {bind}"),
    Deployment("github.com/sugengdcahyo/pyiiif start.sh, with gunicorn's --pid and -e of a "
               "supervisord setup (docs.gunicorn.org deploy.html)",
               "{app} -b {bind} -w 2 --pid {tmp}/gunicorn.pid -e DJANGO_SETTINGS_MODULE=x.y"),
    Deployment("uvicorn.org deployment, huggingface.co/spaces/Adityabhaskar/stealth Dockerfile",
               "-w 4 -k uvicorn.workers.UvicornWorker --bind {bind} app:demo",
               expect="wsgiloop serves WSGI apps; an ASGI app needs an ASGI server"),
    Deployment("github.com/IZdigital-FAU/imgs.ai run.sh (--reload in production)",
               "--timeout 120 -b {bind} --access-logfile {tmp}/access.log {app} --reload"),
    Deployment("docs.gunicorn.org settings.html#daemon, as many init scripts use it",
               "--daemon --workers 3 --bind {bind} {app}",
               expect="wsgiloop does not daemonize"),
    Deployment("docs.gunicorn.org settings.html#worker-class (gevent)",
               "-k gevent --worker-connections 1000 {app} --bind {bind}",
               expect="drop the green-thread worker"),
    # -- config files (-c gunicorn.conf.py) -----------------------------------------------------
    Deployment("github.com/benoitc/gunicorn examples/example_config.py", config="""
bind = '{bind}'
backlog = 2048
workers = 1
worker_class = 'sync'
worker_connections = 1000
timeout = 30
keepalive = 2
spew = False
daemon = False
raw_env = ['DJANGO_SECRET_KEY=something', 'SPAM=eggs']
pidfile = None
umask = 0
user = None
group = None
tmp_upload_dir = None
errorlog = '-'
loglevel = 'info'
accesslog = '-'
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
proc_name = None

def post_fork(server, worker):
    server.log.info("post_fork ran for %s", worker.pid)

def pre_fork(server, worker):
    pass

def pre_exec(server):
    server.log.info("pre_exec ran")

def when_ready(server):
    server.log.info("when_ready ran")

def worker_int(worker):
    worker.log.info("worker_int ran")

def worker_abort(worker):
    worker.log.info("worker_abort ran")
"""),
    Deployment("github.com/mohammad-pakravan/staff_manager_backend compose/prod/gunicorn.conf.py",
               config="""
bind = "{bind}"
workers = 3
worker_class = "sync"
worker_connections = 1000
timeout = 120
keepalive = 2
max_requests = 1000
max_requests_jitter = 100
preload_app = True
accesslog = "{tmp}/gunicorn_access.log"
errorlog = "{tmp}/gunicorn_error.log"
loglevel = "info"
"""),
    Deployment("github.com/ruthlessPuppy/infinita_progressus backend/gunicorn.conf.py", config="""
bind = "{bind}"
workers = 4
threads = 8
worker_class = "gthread"
timeout = 120
keepalive = 5
max_requests = 1000
max_requests_jitter = 50
"""),
    Deployment("github.com/MattSegal/django-deploy config/gunicorn.conf.py", config="""
bind = "{bind}"
workers = 3
accesslog = "{tmp}/gunicorn.access.log"
errorlog = "{tmp}/gunicorn.app.log"
capture_output = True
loglevel = "info"
"""),
    Deployment("github.com/manh26x/emlinh-project emlinh_mng/gunicorn.conf.py", config="""
bind = "{bind}"
workers = 2
timeout = 60
loglevel = "info"
errorlog = "{tmp}/gunicorn-error.log"
accesslog = "{tmp}/gunicorn-access.log"
"""),
    Deployment("pythonspeed.com/articles/gunicorn-in-docker (as config files cite it)", config="""
import multiprocessing
bind = "{bind}"
workers = 2
threads = 4
worker_tmp_dir = "/dev/shm"
forwarded_allow_ips = "*"
errorlog = "-"
accesslog = "-"
"""),
    Deployment("gist.github.com/amalgjose/8a12606a3b0124cda4e193d4ebba2e1a (hooks)", config="""
bind = "{bind}"

def on_starting(server):
    print("Server has started")

def on_reload(server):
    print("Server has reloaded")

def post_worker_init(worker):
    print("Worker has been initialized. Worker Process id -->", worker.pid)
"""),
    Deployment("a gunicorn.conf.py sizing workers from the CPU count (gunicorn's design docs)",
               config="""
import multiprocessing
bind = "{bind}"
workers = min(multiprocessing.cpu_count() * 2 + 1, 3)
threads = 2
"""),
    Deployment("github.com/LeeHanYeong/let-us-Go .config/production_master/gunicorn.py", config="""
daemon = False
chdir = '{tmp}'
bind = 'unix:{tmp}/app.sock'
worker_class = 'gevent'
workers = 4
timeout = 60
capture_output = True
raw_env = ['DJANGO_SETTINGS_MODULE=config.settings.production_master']
""", expect="drop the green-thread worker"),
    Deployment("github.com/rushanqa210488/service_fasad fasad/base/gunicorn_config.py", config="""
command = '/var/www/mysite_03/env/bin/gunicorn'
python_path = '/var/www/mysite_03/fasad/base'
bind = '{bind}'
workers = 5
user = 'nobody'
raw_env = 'DJANGO_SETTINGS_MODULE=base.settings'
""", expect="unknown setting 'command'"),
    Deployment("github.com/resource-watch/aqueduct-analysis-microservice gunicorn.py", config="""
import os
bind = '{bind}'
backlog = 2048
worker_class = 'eventlet'
workers = 8
threads = 1
worker_connections = 1000
timeout = 240
keepalive = 2
max_requests = 1000
max_requests_jitter = 50
max_request_line = 2**16 - 2
""", expect="unknown setting 'max_request_line'"),
    Deployment("github.com/mmvitamush/MyGitHub gunicorn_c.py (gunicorn 0.x settings)", config="""
bind = '{bind}'
workers = 5
backlog = 2048
worker_class = 'gevent'
debug = True
daemon = True
pidfile = 'gunicorn.pid'
logfile = 'gunicorn.log'
""", expect="unknown setting 'debug'"),
]
