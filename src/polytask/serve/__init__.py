"""HTTP serving of a trained model (``polytask serve``): FastAPI + uvicorn, an asyncio
micro-batcher in front of the Predictor, Prometheus metrics.

Needs the optional packages fastapi, uvicorn and prometheus_client (``pip install
'polytask[serve]'``); nothing else in polytask imports this package.
"""

from polytask.serve.app import ServeSettings, app_for, create_app
from polytask.serve.server import serve

__all__ = ["ServeSettings", "app_for", "create_app", "serve"]
