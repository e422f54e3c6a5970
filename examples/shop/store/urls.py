from __future__ import annotations

from django.urls import path

from store import views

urlpatterns = [
    path("healthz/", views.healthz),
    path("products/<int:pk>/", views.product_detail),
    path("orders/", views.order_list),
    path("orders/prefetched/", views.order_list_prefetched),
    path("orders/<int:pk>/confirm/", views.confirm_order),
    path("shipping/quote/", views.shipping_quote),
    path("memory/hog/", views.memory_hog),
    path("memory/release/", views.memory_release),
    path("reports/sales/", views.sales_report),
    path("reports/digest/", views.sales_digest),
    path("search/", views.search),
    path("catalog/reindex/", views.reindex_catalog),
    path("probe/queries/", views.query_probe),
]
