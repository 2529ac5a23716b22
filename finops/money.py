"""Money as people read it: `format_money(Decimal("227.450286000000000"), "USD")` -> "227.45 USD".

Decimal all the way (never float). Two decimals with thousands separators; an amount that is not zero but
rounds to 0.00 keeps its first significant digits ("0.0042 USD") so it does not pass for nothing; zero in
any exponent (`0E-15`) is "0.00". Used by the admin lists (costs_app, providers_app, tasks_app) and the
`money` template filter (costs_app/templatetags/money.py).
"""

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

CENT = Decimal("0.01")


def format_money(amount, currency: str | None = None) -> str:
    if amount is None or amount == "":
        return "—"
    try:
        value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    except (InvalidOperation, ValueError):
        return str(amount)
    if not value.is_finite():
        return str(value)
    if value.is_zero():
        text = "0.00"
    elif abs(value) < CENT:
        # Four significant digits of a tiny amount, trailing zeros dropped.
        exponent = value.adjusted() - 3
        text = f"{value.quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_UP).normalize():f}"
    else:
        text = f"{value.quantize(CENT, rounding=ROUND_HALF_UP):,.2f}"
    return f"{text} {currency}" if currency else text


def money_column(field: str, *, currency: str = "currency", description: str | None = None):
    """A list_display column of a ModelAdmin: `saving = money_column("estimated_monthly_saving")`; sortable by
    the field, right-aligned and unbroken (class finops-money of static/finops/admin.css)."""
    from django.contrib import admin
    from django.utils.html import format_html

    @admin.display(description=description or field.replace("_", " "), ordering=field)
    def column(self, obj):
        code = getattr(obj, currency, None) if currency else None
        return format_html('<span class="finops-money">{}</span>', format_money(getattr(obj, field), code))

    column.__name__ = f"{field}_money"
    return column
