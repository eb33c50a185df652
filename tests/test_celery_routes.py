"""Celery routing: validations wait on their own queue, never in front of the fleet's periodic tasks."""

from django.conf import settings

from hotswap.celery import app


def queue_of(task_name: str) -> str:
    return app.amqp.router.route({}, task_name)["queue"].name


def test_validations_have_a_queue_of_their_own_and_every_other_task_the_default():
    assert queue_of("models_app.tasks.model_version_validate") == settings.CELERY_VALIDATION_QUEUE
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert queue_of(entry["task"]) == settings.CELERY_TASK_DEFAULT_QUEUE, entry["task"]
    assert settings.CELERY_VALIDATION_QUEUE != settings.CELERY_TASK_DEFAULT_QUEUE


def test_it_names_every_queue_a_task_is_routed_to_for_a_worker_that_runs_them_all():
    from hotswap.celery import routed_queues

    assert routed_queues() == sorted({settings.CELERY_TASK_DEFAULT_QUEUE, settings.CELERY_VALIDATION_QUEUE})
