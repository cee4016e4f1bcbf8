"""What one identity (its roles and traits) may do. Pure: the caller loads the roles and traits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from devicetrust.access.labels import label_matches
from devicetrust.access.traits import expand_traits, trait_values
from devicetrust.errors import AccessDeniedError
from devicetrust.types.labels import WILDCARD, Labels
from devicetrust.types.role import KNOWN_VERBS, Role, RoleConditions

_REQUEST_VERBS = frozenset(KNOWN_VERBS) - {WILDCARD}


class AccessChecker:
    """Answers RBAC questions for one identity. Deny beats allow in every answer."""

    def __init__(self, roles: Sequence[Role], traits: Mapping[str, Sequence[str]]) -> None:
        self._roles = tuple(roles)
        self._traits: Mapping[str, tuple[str, ...]] = {name: trait_values(traits, name) for name in traits}

    @property
    def roles(self) -> tuple[Role, ...]:
        return self._roles

    # Admin rules.

    def check_rule(self, resource: str, verb: str) -> None:
        """Raises AccessDeniedError unless an allow rule grants ``verb`` on ``resource`` and no deny rule."""
        if not self.has_rule(resource, verb):
            raise AccessDeniedError(f'access denied: missing permission "{verb}" on "{resource}"')

    def has_rule(self, resource: str, verb: str) -> bool:
        """For showing or hiding things in a UI; enforce with :meth:`check_rule`."""
        # A verb or resource outside the vocabulary is the caller's bug: only a "*" rule could grant it.
        if verb not in _REQUEST_VERBS:
            raise ValueError(f"unknown verb {verb!r}: use one of {sorted(_REQUEST_VERBS)}")
        if not resource or resource == WILDCARD:
            raise ValueError(f"a permission check needs one concrete resource, got {resource!r}")
        if any(rule.covers(resource, verb) for role in self._roles for rule in role.deny.rules):
            return False
        return any(rule.covers(resource, verb) for role in self._roles for rule in role.allow.rules)

    # Principals: logins, Kubernetes groups and users, database names and users.

    def _expand(self, conditions: Iterable[RoleConditions], field: str) -> tuple[str, ...]:
        values: list[str] = []
        for condition in conditions:
            values.extend(getattr(condition, field))
        return expand_traits(values, self._traits)

    def _denied(self, field: str) -> tuple[str, ...]:
        return self._expand((role.deny for role in self._roles), field)

    def _granted(self, field: str, roles: Sequence[Role], *, wildcard_allowed: bool) -> tuple[str, ...]:
        denied = set(self._denied(field))
        if WILDCARD in denied:
            return ()
        allowed = self._expand((role.allow for role in roles), field)
        granted = {value for value in allowed if value not in denied}
        if not wildcard_allowed:
            granted.discard(WILDCARD)
        return tuple(sorted(granted))

    def logins(self) -> tuple[str, ...]:
        """OS logins (SSH principals) allowed by any role, minus denied ones, sorted."""
        # A trait value "*" must not become a login matching every account.
        return self._granted("logins", self._roles, wildcard_allowed=False)

    def node_logins(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        """The logins allowed on one node: only the roles whose node_labels match it count."""
        return self._granted("logins", self.roles_matching_node(labels), wildcard_allowed=False)

    def kubernetes_groups(self) -> tuple[str, ...]:
        return self._granted("kubernetes_groups", self._roles, wildcard_allowed=True)

    def kubernetes_users(self) -> tuple[str, ...]:
        return self._granted("kubernetes_users", self._roles, wildcard_allowed=True)

    def kubernetes_cluster_users(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        """The Kubernetes users to impersonate on a cluster with ``labels``: only the roles matching it count,
        and never "*" (an impersonation names one user)."""
        return self._granted("kubernetes_users", self.roles_matching_kubernetes_cluster(labels), wildcard_allowed=False)

    def kubernetes_cluster_groups(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        """The Kubernetes groups to impersonate on a cluster with ``labels`` (matching roles only, never "*")."""
        return self._granted(
            "kubernetes_groups", self.roles_matching_kubernetes_cluster(labels), wildcard_allowed=False
        )

    def db_users(self) -> tuple[str, ...]:
        """Database users; "*" in the result means any user that is not denied (see allows_db_user)."""
        return self._granted("db_users", self._roles, wildcard_allowed=True)

    def db_names(self) -> tuple[str, ...]:
        """Database names; "*" in the result means any name that is not denied (see allows_db_name)."""
        return self._granted("db_names", self._roles, wildcard_allowed=True)

    def database_users(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        """The database users allowed on a database with ``labels`` ("*": any user not denied)."""
        return self._granted("db_users", self.roles_matching_database(labels), wildcard_allowed=True)

    def database_names(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        """The database names allowed on a database with ``labels`` ("*": any name not denied)."""
        return self._granted("db_names", self.roles_matching_database(labels), wildcard_allowed=True)

    def allows_db_user(self, db_user: str) -> bool:
        return self._allows_value("db_users", db_user)

    def allows_db_name(self, db_name: str) -> bool:
        return self._allows_value("db_names", db_name)

    def _allows_value(self, field: str, value: str) -> bool:
        denied = self._denied(field)
        if value in denied or WILDCARD in denied:
            return False
        allowed = self._expand((role.allow for role in self._roles), field)
        return value in allowed or WILDCARD in allowed

    # Resources by their labels.

    def _selector(self, conditions: RoleConditions, field: str) -> Labels:
        selector: Labels = getattr(conditions, field)
        return {key: expand_traits(values, self._traits) for key, values in selector.items()}

    def _roles_matching(self, field: str, labels: Mapping[str, str]) -> tuple[Role, ...]:
        if any(label_matches(self._selector(role.deny, field), labels) for role in self._roles):
            return ()
        return tuple(role for role in self._roles if label_matches(self._selector(role.allow, field), labels))

    def roles_matching_node(self, labels: Mapping[str, str]) -> tuple[Role, ...]:
        """Roles whose allow.node_labels match the node; none if any role's deny.node_labels match it."""
        return self._roles_matching("node_labels", labels)

    def roles_matching_kubernetes_cluster(self, labels: Mapping[str, str]) -> tuple[Role, ...]:
        return self._roles_matching("kubernetes_labels", labels)

    def roles_matching_database(self, labels: Mapping[str, str]) -> tuple[Role, ...]:
        return self._roles_matching("db_labels", labels)

    def roles_granting_database(self, labels: Mapping[str, str], db_user: str, db_name: str) -> tuple[Role, ...]:
        """The roles that grant ``db_user`` on ``db_name`` of a database with ``labels``: each must match the
        labels and allow both values itself (a role allowing the user and another allowing the name grant
        nothing together). None if a deny rule names the user, the name or the labels. An empty user or name
        is never granted."""
        if not db_user or not db_name:
            return ()
        if not (self._allows_value("db_users", db_user) and self._allows_value("db_names", db_name)):
            return ()

        def allows(role: Role, field: str, value: str) -> bool:
            allowed = self._expand((role.allow,), field)
            return value in allowed or WILDCARD in allowed

        return tuple(
            role
            for role in self.roles_matching_database(labels)
            if allows(role, "db_users", db_user) and allows(role, "db_names", db_name)
        )
