"""`manage.py setup_shop`: migrate, then seed PostgreSQL and MongoDB. Safe to run again."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction
from pymongo import ASCENDING, UpdateOne

from store.documents import mongo
from store.models import Category, Customer, Order, OrderLine, Product, Review

CATEGORIES = ["books", "games", "garden", "kitchen", "music", "outdoor", "tools", "toys"]
ADJECTIVES = ["Classic", "Compact", "Deluxe", "Eco", "Pocket"]
NOUNS = ["Lamp", "Kettle", "Puzzle", "Trowel", "Speaker", "Tent", "Wrench", "Novel"]
PRODUCTS = 40
CUSTOMERS = 15
ORDERS = 30
EPOCH = datetime(2025, 1, 1, tzinfo=timezone.utc)


class Command(BaseCommand):
    help = "Migrate the shop's database and seed it (and MongoDB) with a small catalogue and orders."

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=max(0, options["verbosity"] - 1))
        rng = random.Random(42)
        with transaction.atomic():
            self._seed_catalogue(rng)
            self._seed_orders(rng)
        self._seed_documents()
        self.stdout.write(
            f"shop ready: {Category.objects.count()} categories, {Product.objects.count()} products, "
            f"{Order.objects.count()} orders, {OrderLine.objects.count()} order lines, "
            f"{Review.objects.count()} reviews; MongoDB: {mongo().product_content.count_documents({})} "
            "product documents"
        )

    def _seed_catalogue(self, rng: random.Random) -> None:
        Category.objects.bulk_create(
            [Category(name=slug.title(), slug=slug) for slug in CATEGORIES], ignore_conflicts=True
        )
        categories = {c.slug: c for c in Category.objects.all()}
        Product.objects.bulk_create(
            [
                Product(
                    sku=sku(i),
                    name=f"{ADJECTIVES[i % len(ADJECTIVES)]} {NOUNS[i % len(NOUNS)]} {i}",
                    category=categories[CATEGORIES[i % len(CATEGORIES)]],
                    price=Decimal(rng.randrange(500, 20000)) / 100,
                    stock=1000,
                )
                for i in range(PRODUCTS)
            ],
            ignore_conflicts=True,
        )
        without_reviews = Product.objects.filter(reviews__isnull=True).order_by("pk")
        Review.objects.bulk_create(
            [
                Review(product=product, rating=rng.randint(1, 5), title=f"Review {n} of {product.sku}",
                       created_at=EPOCH + timedelta(days=n))
                for product in without_reviews
                for n in range(2)
            ]
        )

    def _seed_orders(self, rng: random.Random) -> None:
        Customer.objects.bulk_create(
            [Customer(name=f"Customer {i}", email=f"customer{i}@example.com") for i in range(CUSTOMERS)],
            ignore_conflicts=True,
        )
        customers = list(Customer.objects.order_by("pk"))
        Order.objects.bulk_create(
            [
                Order(number=f"ORD-{i:05d}", customer=customers[i % len(customers)],
                      created_at=EPOCH + timedelta(hours=i))
                for i in range(ORDERS)
            ],
            ignore_conflicts=True,
        )
        products = list(Product.objects.order_by("pk"))
        OrderLine.objects.bulk_create(
            [
                OrderLine(order=order, product=product, quantity=rng.randint(1, 3), unit_price=product.price)
                for order in Order.objects.filter(lines__isnull=True).order_by("pk")
                for product in rng.sample(products, rng.randint(1, 4))
            ]
        )

    def _seed_documents(self) -> None:
        content = mongo().product_content
        content.create_index([("sku", ASCENDING)], unique=True)
        content.bulk_write(
            [
                UpdateOne(
                    {"sku": sku(i)},
                    {"$set": {"position": i, "description": f"Everything about {sku(i)}.", "specs": {"weight_g": 100 + i}}},
                    upsert=True,
                )
                for i in range(PRODUCTS)
            ]
        )


def sku(index: int) -> str:
    return f"SKU-{index:04d}"
