"""The Celery event stream: reading it off the broker and decoding what it carries."""
