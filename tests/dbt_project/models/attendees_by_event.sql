-- Live attendees per event now, and how many of them changed since they first appeared
-- (from the history view): the kind of model a reporting team builds on syncsvc.
with live as (
    select event_guid, user_ref
    from {{ source('syncsvc', 'users') }}
    where deleted_at is null
),
versions as (
    select event_guid, user_ref, count(*) as versions
    from {{ source('syncsvc', 'users_history') }}
    group by event_guid, user_ref
)
select
    e.event_guid,
    e.event_name,
    count(l.user_ref) as attendees,
    count(*) filter (where v.versions > 1) as attendees_changed
from {{ source('syncsvc', 'events') }} e
left join live l on l.event_guid = e.event_guid
left join versions v on v.event_guid = l.event_guid and v.user_ref = l.user_ref
where e.deleted_at is null
group by e.event_guid, e.event_name
