from __future__ import annotations

from django.urls import include, path

from reliability_app import views

urlpatterns = [
    path("rel/state/", views.state),
    path("rel/probe/", views.probe),
    path("rel/hostile/sql/", views.hostile_sql),
    path("rel/hostile/listener/", views.hostile_listener),
    path("rel/hostile/enqueue/", views.hostile_enqueue),
    path("rel/hostile/rule/", views.hostile_rule),
    path("rel/privacy/", views.privacy),
    path("", include("shop.urls")),
]
