"""`{% load money %}{{ amount|money:currency }}`: finops.money.format_money in templates."""

from django import template

from finops.money import format_money

register = template.Library()


@register.filter
def money(amount, currency=None):
    return format_money(amount, currency)
